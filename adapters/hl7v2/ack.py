"""Building acknowledgments (ACK) with MSA and ERR.

HL7 v2.5 chapter 2, section 2.9 (message processing rules: original and enhanced acknowledgment
modes, AA/AE/AR and CA/CE/CR), 2.14.1 (ACK message), 2.15.8 (MSA), 2.15.5 (ERR: ERR-2 error
location ERL, ERR-3 HL7 error code CWE from table 0357, ERR-4 severity from table 0516, ERR-7
diagnostic information). Versions before 2.5 carry the error in ERR-1 (ELD: segment^sequence^
field^code&text&HL70357) instead, and MSA-3 (text message) is used up to v2.6.
"""

from __future__ import annotations

import random
import re
from datetime import datetime
from typing import Sequence

from .charsets import codec_for
from .delimiters import DEFAULT_DELIMITERS, Delimiters
from .dtm import format_dtm
from .errors import TABLE_0357, HL7ParseError
from .model import HeaderInfo, Message

ACK_CODES = frozenset(("AA", "AE", "AR", "CA", "CE", "CR"))
_TRIGGER = re.compile(r"[A-Za-z0-9]{3}\Z")


def new_control_id(now: datetime | None = None) -> str:
    """A 20-character MSH-10 (ST length limit before v2.7): timestamp plus 6 random digits."""
    moment = now or datetime.now()
    return moment.strftime("%Y%m%d%H%M%S") + f"{random.randrange(10 ** 6):06d}"


def _version_tuple(version: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (version or "").split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or (2, 5)


def _value(value: str | Sequence[str] | None, d: Delimiters) -> str | None:
    """A caller-given HD: a str is one component (escaped); a sequence is the components."""
    if value is None:
        return None
    if isinstance(value, str):
        return d.escape_text(value)
    return d.component.join(d.escape_text(v or "") for v in value)


def _writable(d: Delimiters) -> bool:
    """Whether an ACK can be written with the sender's delimiters (none a letter or digit)."""
    return not any(c.isalnum() for c in d.field + d.encoding_characters)


def build_ack(original: Message | HeaderInfo, ack_code: str = "AA", error: HL7ParseError | None = None,
              text: str | None = None, *, sending_application: str | Sequence[str] | None = None,
              sending_facility: str | Sequence[str] | None = None, control_id: str | None = None,
              now: datetime | None = None, severity: str | None = None) -> bytes:
    """Build the ACK for ``original`` (a parsed Message, or a HeaderInfo for unparsable input).

    MSH: sender/receiver swapped (unless ``sending_application``/``sending_facility`` are
    given), same delimiters (the standard ``|^~\\&`` when the sender's include a letter or digit,
    which would split the ACK's own codes), MSH-11 processing id, MSH-12 version and MSH-18
    character set as the original, new control id, MSH-9 ``ACK^<trigger>^ACK``. MSA-1
    ``ack_code``, MSA-2 the original MSH-10. With ``error``: ERR (ERR-2 ``SEG^seq^field``, ERR-3 ``code^text^HL70357``,
    ERR-4 severity ``E`` -- ``W`` for AA/CA -- ERR-7 the diagnostic message; ERR-1 ELD before
    v2.5). Returned as bytes in the original's character set (unencodable characters become
    ``?``), segments terminated by CR, not MLLP-framed.

    Raises ValueError for an unknown ``ack_code``.
    """
    if ack_code not in ACK_CODES:
        raise ValueError(f"ack_code must be one of {sorted(ACK_CODES)}, not {ack_code!r}")
    header = original.header if isinstance(original, Message) else original
    d = header.delimiters
    echo = header.raw
    if not _writable(d):
        # a letter or digit among the sender's delimiters would split "ACK", "MSA" or the error
        # code: answer with the standard set, the echoed header fields as escaped values
        d = DEFAULT_DELIMITERS
        echo = lambda n: d.escape_text(header.raw(n)) if header.raw(n) else header.raw(n)  # noqa: E731
    fs, cs = d.field, d.component
    moment = now or datetime.now().astimezone()
    version_raw = echo(12)
    version = _version_tuple(header.version)
    trigger = header.trigger or ""
    if not _TRIGGER.match(trigger):
        trigger = ""     # an unreadable MSH-9.2 echoed would make the ACK itself unreadable

    msh = ["MSH", d.encoding_characters,
           _value(sending_application, d) if sending_application is not None else echo(5),
           _value(sending_facility, d) if sending_facility is not None else echo(6),
           echo(3), echo(4),
           format_dtm(moment), "",
           f"ACK{cs}{d.escape_text(trigger)}{cs}ACK",
           d.escape_text(control_id or new_control_id(moment)),
           echo(11) or "P",
           version_raw or "2.5"]
    charset_raw = echo(18)
    if charset_raw:
        msh.extend([""] * 5 + [charset_raw])               # MSH-13..17 empty, MSH-18
    segments = [fs.join(msh)]

    msa = ["MSA", ack_code, d.escape_text(header.control_id or "")]
    message_text = text if text is not None else (error.message if error else None)
    if message_text and version < (2, 7):
        msa.append(d.escape_text(message_text))
    segments.append(fs.join(msa).rstrip(fs))

    if error is not None:
        sev = severity or ("W" if ack_code in ("AA", "CA") else "E")
        location = cs.join(d.escape_text(str(x)) if x is not None else ""
                           for x in (error.segment, error.position or (1 if error.segment else None), error.field))
        location = location.rstrip(cs)
        code_text = TABLE_0357.get(error.code, error.text)
        if version >= (2, 5):
            err = ["ERR", "", location,
                   cs.join((str(error.code), d.escape_text(code_text), "HL70357")),
                   sev, "", "", d.escape_text(error.message)]
        else:
            sc = d.subcomponent
            eld = location.split(cs) + [""] * (3 - len(location.split(cs)))
            eld = eld[:3] + [sc.join((str(error.code), d.escape_text(code_text), "HL70357"))]
            err = ["ERR", cs.join(eld)]
        segments.append(fs.join(err).rstrip(fs))

    body = "\r".join(segments) + "\r"
    codec = header.charset or codec_for(header.charset_declared) or "ascii"
    if codec in ("utf-16", "utf-32"):
        codec = "utf-8"
    try:
        return body.encode(codec, errors="replace")
    except LookupError:
        return body.encode("utf-8")
