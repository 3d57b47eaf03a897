"""The HL7 v2 parse error, coded with HL7 table 0357 (Message error condition codes).

HL7 v2.5 chapter 2, section 2.15.5 (ERR segment, ERR-3 "HL7 Error Code" uses table 0357) and
section 2.9 (acknowledgment processing). The ingest maps an :class:`HL7ParseError` to an ACK with
an ERR segment (see :mod:`adapters.hl7v2.ack`); anything else is an internal error (207 / AR).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .model import HeaderInfo

# HL7 table 0357 - Message error condition codes
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION_ID = 203
UNKNOWN_KEY_IDENTIFIER = 204
DUPLICATE_KEY_IDENTIFIER = 205
APPLICATION_RECORD_LOCKED = 206
APPLICATION_INTERNAL_ERROR = 207

TABLE_0357: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


class HL7ParseError(Exception):
    """A message (or batch) could not be read; ``code`` is from HL7 table 0357.

    ``segment``/``position``/``field`` locate the problem as ERR-2 (ERL data type, chapter 2
    section 2.15.5.2) does: segment id, segment sequence (1-based occurrence of that segment in
    the message) and field position. For a line that is not a segment at all (``segment`` is
    None), ``position`` is its 1-based ordinal among the message's segments. ``header`` is what could be read of the MSH segment
    (best effort, possibly ``None`` only when used outside :func:`parse_message`), so that
    :func:`adapters.hl7v2.build_ack` can always answer.
    """

    def __init__(self, code: int, message: str, segment: str | None = None, field: int | None = None,
                 position: int | None = None, *, header: "HeaderInfo | None" = None):
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.segment = segment
        self.field = field
        self.position = position
        self.header = header

    @property
    def text(self) -> str:
        """The table 0357 description of :attr:`code`."""
        return TABLE_0357.get(self.code, "Unknown error")

    def __str__(self) -> str:
        where = ""
        if self.segment:
            where = f" at {self.segment}"
            if self.position:
                where += f"({self.position})"
            if self.field is not None:
                where += f"-{self.field}"
        return f"HL7 {self.code} {self.text}{where}: {self.message}"

    def __repr__(self) -> str:
        return (f"HL7ParseError({self.code!r}, {self.message!r}, segment={self.segment!r}, "
                f"field={self.field!r}, position={self.position!r})")
