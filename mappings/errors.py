"""Mapping errors carrying an HL7 table 0357 code, so the hub can answer AE/AR with an ERR segment.

HL7 v2.5 chapter 2, section 2.15.5 (ERR segment) and table 0357 (message error condition codes):
100 segment sequence error, 101 required field missing, 102 data type error, 103 table value not
found, 200 unsupported message type, 201 unsupported event code, 207 application internal error.
"""

from __future__ import annotations

REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
APPLICATION_INTERNAL_ERROR = 207


class MappingError(Exception):
    """A message that cannot be turned into FHIR, with the segment and field at fault.

    ``code`` is an HL7 table 0357 code; ``segment`` a segment id (``"PID"``), ``field`` the field
    number (1-based, as in ERR-2), either may be None when the fault is not in one place.
    """

    def __init__(self, code: int, text: str, segment: str | None = None, field: int | None = None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.segment = segment
        self.field = field

    def __str__(self) -> str:
        where = f" ({self.segment}" + (f"-{self.field}" if self.field else "") + ")" if self.segment else ""
        return f"{self.code}: {self.text}{where}"


class UnsupportedMessage(MappingError):
    """A valid message of a type Yilian does not map: stored and reported, never dropped."""

    def __init__(self, text: str, segment: str | None = "MSH", field: int | None = 9,
                 code: int = UNSUPPORTED_MESSAGE_TYPE):
        super().__init__(code, text, segment, field)
