"""Bytes -> :class:`~adapters.hl7v2.model.Message`: framing, delimiters, character set, segments.

HL7 v2.5 chapter 2: section 2.5 (message construction), 2.5.4 / 2.15.9.1-2 (delimiters from
MSH-1/MSH-2), 2.15.9.18 (MSH-18 character set), 2.10.3 (batch protocol: FHS/BHS/BTS/FTS),
Appendix C (MLLP). Segment terminator is CR (section 2.5.1); LF and CRLF are accepted as well,
as are blank lines between segments.
"""

from __future__ import annotations

import re

from ..mllp import unframe
from .charsets import DEFAULT_FALLBACKS, codec_for, decode_bytes
from .delimiters import DEFAULT_DELIMITERS, Delimiters
from .errors import (DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, SEGMENT_SEQUENCE_ERROR, UNSUPPORTED_EVENT_CODE,
                     UNSUPPORTED_MESSAGE_TYPE, HL7ParseError)
from .model import HeaderInfo, Message, Segment, _Ctx

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_CODE3 = re.compile(r"[A-Za-z0-9]{3}\Z")
_LINES = re.compile(rb"\r\n|\r|\n")
_BATCH_SEGMENTS = frozenset(("FHS", "BHS", "BTS", "FTS"))
_HEADER_SEGMENTS = frozenset(("MSH", "FHS", "BHS"))
_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
              (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_SEGMENT_ID_CACHE: dict[str, bool] = {}
_KNOWN_IDS: set[str] = set()          # segment ids already validated (bounded)
_ENVELOPE = _HEADER_SEGMENTS | _BATCH_SEGMENTS


class _BatchInside(Exception):
    """Internal signal: the input holds batch envelope segments or several messages."""


def clean_bytes(raw: bytes | bytearray | memoryview | str) -> bytes:
    """Remove MLLP framing and byte-order marks; UTF-16/32 (by BOM) and ``str`` become UTF-8.

    Leading/trailing whitespace and NULs are dropped too (Appendix C; section 2.5.1).
    """
    if isinstance(raw, str):
        return raw.lstrip("\ufeff").encode("utf-8")
    data = bytes(raw)
    if b"\x0b" in data[:64] or b"\x1c" in data[-64:]:
        data = unframe(data)
    data = data.strip(b" \t\r\n\x00")
    if data.startswith(_UTF8_BOM):
        data = data[3:].lstrip(b" \t\r\n")
    else:
        for bom, codec in _WIDE_BOMS:
            if data.startswith(bom):
                try:
                    return data.decode(codec).lstrip("\ufeff").strip().encode("utf-8")
                except UnicodeDecodeError:
                    break
    return data


def _is_segment_id(name: str) -> bool:
    ok = _SEGMENT_ID_CACHE.get(name)
    if ok is None:
        ok = _SEGMENT_ID.match(name) is not None
        if len(_SEGMENT_ID_CACHE) < 1024:
            _SEGMENT_ID_CACHE[name] = ok
    return ok


def _read_delimiters(data: bytes, segment: str = "MSH") -> Delimiters:
    """MSH-1/MSH-2 (or FHS/BHS) from the raw bytes; raises HL7ParseError 101/102."""
    if len(data) < 4:
        raise HL7ParseError(REQUIRED_FIELD_MISSING, f"{segment} without field separator", segment, 1, 1)
    fs = data[3:4]
    enc = data[4:10]
    for stop in (fs, b"\r", b"\n"):
        k = enc.find(stop)
        if k >= 0:
            enc = enc[:k]
    if len(enc) > 5:                       # report the whole (too long) MSH-2
        k = data.find(fs, 4)
        enc = data[4:k if k >= 0 else len(data)].split(b"\r")[0].split(b"\n")[0]
    if not (fs + enc).isascii():
        raise HL7ParseError(DATA_TYPE_ERROR, "non-ASCII delimiters in MSH-1/MSH-2", segment, 2, 1)
    return Delimiters.from_msh(fs.decode("ascii"), enc.decode("ascii"), segment)


def _first_line(data: bytes) -> bytes:
    end = len(data)
    for stop in (b"\r", b"\n"):
        k = data.find(stop)
        if 0 <= k < end:
            end = k
    return data[:end]


def locate_charset(msh_line: bytes, delims: Delimiters) -> str | None:
    """First repetition of MSH-18, read from the raw MSH bytes (section 2.15.9.18).

    The field is counted on the bytes; when the line holds non-ASCII bytes (a GB18030 second
    byte may equal ``|``) the count is repeated on UTF-8 / GB18030 decodings and the first
    value naming a known character set wins.
    """
    fs = delims.field
    rep = delims.repetition
    candidates: list[str] = []
    byte_parts = msh_line.split(fs.encode("ascii"))
    if len(byte_parts) > 17:
        candidates.append(byte_parts[17].decode("latin-1"))
    if not msh_line.isascii():
        for codec in ("utf-8", "gb18030"):
            try:
                parts = msh_line.decode(codec).split(fs)
            except UnicodeDecodeError:
                continue
            if len(parts) > 17:
                candidates.append(parts[17])
    values = [c.split(rep)[0].strip() for c in candidates]
    for value in values:
        if value and codec_for(value):
            return value
    for value in values:
        if value:
            return value
    return None


def parse_message(raw: bytes | str, charset_override: str | None = None, *,
                  fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS) -> Message:
    """Parse one HL7 v2 message.

    ``raw`` may be MLLP-framed and start with a BOM; segments may end with CR, LF or CRLF. A
    ``str`` is treated as already-decoded text. ``charset_override`` (per-sender configuration)
    replaces MSH-18; ``fallbacks`` are tried when the declared/overridden set cannot decode the
    bytes (see :func:`adapters.hl7v2.charsets.decode_bytes`). A batch (FHS/BHS...) holding exactly
    one message is accepted.

    Raises HL7ParseError: 100 (does not start with MSH/FHS/BHS, bad segment id, several
    messages, batch envelope out of order), 101 (MSH-2, MSH-9 or MSH-10 missing), 102 (bad
    encoding characters, bytes undecodable by the whole fallback chain), 200 / 201 (MSH-9.1 /
    MSH-9.2 not a 3-character code). The error's ``header`` holds what could be read of MSH.
    """
    if isinstance(raw, str):
        charset_override = charset_override or "utf-8"
    data = clean_bytes(raw)
    try:
        try:
            return _parse_single(data, charset_override, fallbacks)
        except _BatchInside:
            messages = split_batch(data)
            if len(messages) != 1:
                raise HL7ParseError(SEGMENT_SEQUENCE_ERROR,
                                    f"input holds {len(messages)} messages; use split_batch()/parse_batch()",
                                    "MSH", None, 2 if len(messages) > 1 else None) from None
            return _parse_single(messages[0], charset_override, fallbacks, allow_batch=False)
    except HL7ParseError as err:
        if err.header is None:
            err.header = read_header(data, charset_override, fallbacks=fallbacks)
        raise


def _parse_single(data: bytes, override: str | None, fallbacks: tuple[str, ...],
                  allow_batch: bool = True) -> Message:
    head = data[:3]
    if head in (b"FHS", b"BHS"):
        if allow_batch:
            raise _BatchInside
    if head != b"MSH":
        shown = data[:3].decode("latin-1") or "(empty)"
        raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, f"message must start with MSH, found {shown!r}",
                            shown if _is_segment_id(shown) else None, None, 1)
    delims = _read_delimiters(data)
    declared = locate_charset(_first_line(data), delims)
    decoded = decode_bytes(data, declared, override, fallbacks)
    if decoded is None:
        raise HL7ParseError(DATA_TYPE_ERROR,
                            f"bytes cannot be decoded as {override or declared or 'ASCII'} "
                            f"nor as any of {', '.join(fallbacks)}", "MSH", 18, 1)
    text = decoded.text
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    ctx = _Ctx(delims, decoded.charset)
    fs = delims.field
    known = _KNOWN_IDS
    segments: list[Segment] = []
    append = segments.append
    for line in text.split("\r"):
        if not line:
            continue
        name = line[:3]
        if name not in known:
            if line.isspace():
                continue
            if not _SEGMENT_ID.match(name):
                raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, f"invalid segment id in {line[:20]!r}",
                                    None, None, len(segments) + 1)
            if len(known) < 2048:
                known.add(name)
        sep = line[3:4]
        if sep != fs and sep:
            raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, f"invalid segment {line[:20]!r}", None, None,
                                len(segments) + 1)
        parts = line.split(fs)
        if name in _ENVELOPE:
            if (name != "MSH" or segments) and allow_batch:
                raise _BatchInside
            if name != "MSH" or segments:
                raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, f"unexpected {name} segment inside a message",
                                    name, None, 1)
            parts.insert(1, fs)
        append(Segment(name, parts, ctx))
    header = HeaderInfo(delims, decoded.charset, declared, decoded.fallback, segments[0].fields)
    _check_header(header)
    return Message(segments, header, data, text, ctx)


def _check_header(header: HeaderInfo) -> None:
    """MSH-9.1 and MSH-10 are required (section 2.15.9); codes must look like codes."""
    mtype = header.message_type
    if not mtype:
        raise HL7ParseError(REQUIRED_FIELD_MISSING, "message type (MSH-9) missing", "MSH", 9, 1, header=header)
    if not _CODE3.match(mtype):
        raise HL7ParseError(UNSUPPORTED_MESSAGE_TYPE, f"message type {mtype!r} is not a 3-character code",
                            "MSH", 9, 1, header=header)
    trigger = header.trigger
    if trigger and not _CODE3.match(trigger):
        raise HL7ParseError(UNSUPPORTED_EVENT_CODE, f"trigger event {trigger!r} is not a 3-character code",
                            "MSH", 9, 1, header=header)
    if not header.control_id:
        raise HL7ParseError(REQUIRED_FIELD_MISSING, "message control id (MSH-10) missing", "MSH", 10, 1,
                            header=header)


def read_header(raw: bytes | str, charset_override: str | None = None, *,
                fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS) -> HeaderInfo:
    """Best-effort reading of the first MSH segment; never raises.

    For acknowledging input that :func:`parse_message` rejected (section 2.9.2: the receiver
    still answers with AE/AR). Unknown parts keep their defaults (``|^~\\&``, no fields).
    """
    try:
        data = clean_bytes(raw) if not isinstance(raw, bytes) or raw[:3] != b"MSH" else raw
        for line in _LINES.split(data):
            if line.startswith(b"MSH"):
                break
        else:
            return HeaderInfo()
        try:
            delims = _read_delimiters(line)
        except HL7ParseError:
            return HeaderInfo()
        declared = locate_charset(line, delims)
        decoded = decode_bytes(line, declared, charset_override, fallbacks)
        if decoded is None:
            text, charset, fallback = line.decode("latin-1"), codec_for(charset_override or declared), True
        else:
            text, charset, fallback = decoded.text, decoded.charset, decoded.fallback
        parts = text.split(delims.field)
        parts.insert(1, delims.field)
        return HeaderInfo(delims, charset, declared, fallback, parts)
    except Exception:  # noqa: BLE001 - must never fail: it is the last resort for an ACK
        return HeaderInfo()


def split_batch(raw: bytes | str) -> list[bytes]:
    """Split a batch or file (FHS/BHS ... BTS/FTS, chapter 2 section 2.10.3) into messages.

    Returns each message's bytes (segments joined by CR). Plain concatenated messages without
    an envelope split too. Envelope segments may be missing (lenient) but not out of order:
    raises HL7ParseError 100 for a segment outside any message, a second FHS, a BHS inside an
    open batch, or anything after FTS.
    """
    return _scan_batch(clean_bytes(raw))[0]


def _scan_batch(data: bytes) -> tuple[list[bytes], list[tuple[str, bytes]]]:
    messages: list[list[bytes]] = []
    envelope: list[tuple[str, bytes]] = []
    current: list[bytes] | None = None
    batch_open = False
    seen_fts = False
    index = 0
    for line in _LINES.split(data):
        if not line.strip():
            continue
        index += 1
        name = line[:3].decode("latin-1")
        if seen_fts:
            raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, f"{name} after FTS", name, None, index)
        if name == "FHS":
            if index != 1:
                raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, "FHS must be the first segment", "FHS", None, index)
            envelope.append((name, line))
            current = None
        elif name == "BHS":
            if batch_open:
                raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, "BHS inside an open batch (BTS missing)",
                                    "BHS", None, index)
            batch_open = True
            envelope.append((name, line))
            current = None
        elif name == "BTS":
            batch_open = False
            envelope.append((name, line))
            current = None
        elif name == "FTS":
            seen_fts = True
            envelope.append((name, line))
            current = None
        elif name == "MSH":
            current = [line]
            messages.append(current)
        elif current is None:
            raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, f"{name} segment outside a message (MSH missing)",
                                name if _is_segment_id(name) else None, None, index)
        else:
            current.append(line)
    return [b"\r".join(m) + b"\r" for m in messages], envelope


class Batch:
    """A parsed batch/file envelope (section 2.10.3) and its messages' bytes.

    ``file_header``/``batch_headers``/``batch_trailers``/``file_trailer`` are Segments (FHS-9
    file name, FHS-11 / BHS-11 control id, BTS-1 message count ...). Parse each message with
    :func:`parse_message` (or :meth:`parse_messages`) so one bad message does not hide the others.
    """

    def __init__(self, raw_messages: list[bytes], envelope: list[Segment]):
        self.raw_messages = raw_messages
        self.envelope = envelope

    def _named(self, name: str) -> list[Segment]:
        return [s for s in self.envelope if s.name == name]

    @property
    def file_header(self) -> Segment | None:
        found = self._named("FHS")
        return found[0] if found else None

    @property
    def file_trailer(self) -> Segment | None:
        found = self._named("FTS")
        return found[0] if found else None

    @property
    def batch_headers(self) -> list[Segment]:
        return self._named("BHS")

    @property
    def batch_trailers(self) -> list[Segment]:
        return self._named("BTS")

    @property
    def control_id(self) -> str | None:
        """BHS-11 of the first batch, else FHS-11."""
        for seg in self.batch_headers + ([self.file_header] if self.file_header else []):
            value = seg.get(11)
            if value:
                return value
        return None

    @property
    def declared_message_count(self) -> int | None:
        """Sum of BTS-1 (batch message counts), None when no BTS carries one."""
        counts = [s.get(1) for s in self.batch_trailers]
        numbers = [int(c) for c in counts if c and c.strip().isdigit()]
        return sum(numbers) if numbers else None

    def parse_messages(self, charset_override: str | None = None) -> list[Message]:
        """Parse every message; raises the first HL7ParseError."""
        return [parse_message(m, charset_override) for m in self.raw_messages]

    def __repr__(self) -> str:
        return f"Batch({len(self.raw_messages)} messages, envelope={[s.name for s in self.envelope]})"


def parse_batch(raw: bytes | str, charset_override: str | None = None, *,
                fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS) -> Batch:
    """Split a batch and parse its envelope segments (FHS/BHS/BTS/FTS); see :func:`split_batch`.

    Envelope segments take their delimiters from FHS/BHS-1/2 (default ``|^~\\&``) and are
    decoded with the same chain as messages. Raises HL7ParseError 100 like split_batch.
    """
    data = clean_bytes(raw)
    messages, envelope_lines = _scan_batch(data)
    delims = DEFAULT_DELIMITERS
    segments: list[Segment] = []
    for name, line in envelope_lines:
        if name in ("FHS", "BHS"):
            delims = _read_delimiters(line, name)
        decoded = decode_bytes(line, None, charset_override, fallbacks)
        text = decoded.text if decoded else line.decode("latin-1")
        parts = text.split(delims.field)
        if name in ("FHS", "BHS"):
            parts.insert(1, delims.field)
        segments.append(Segment(name, parts, _Ctx(delims, decoded.charset if decoded else "latin-1")))
    return Batch(messages, segments)
