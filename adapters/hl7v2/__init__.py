"""HL7 v2 adapter: bytes -> parsed messages, batches, timestamps and ACKs (no FHIR, no I/O).

HL7 v2.5 chapter 2 (control): message construction (2.5), escape sequences (2.7), message
processing and acknowledgments (2.9), batches (2.10.3), MSH/MSA/ERR (2.15), MLLP (Appendix C,
in :mod:`adapters.mllp`).

    msg = parse_message(raw_bytes, charset_override=None)
    msg.message_type, msg.trigger, msg.structure, msg.control_id, msg.charset
    msg.get("PID-3(2)-1"); msg.segment("PID").get(5, comp=1)
    for order in msg.groups("OBR", members={"OBX", "NTE"}): ...
    ack = build_ack(msg, "AA")
"""

from .ack import ACK_CODES, build_ack, new_control_id
from .charsets import DEFAULT_FALLBACKS, Decoded, codec_for, decode_bytes
from .delimiters import DEFAULT_DELIMITERS, Delimiters
from .dtm import PRECISIONS, HL7DateTime, format_dtm, parse_dtm
from .errors import TABLE_0357, HL7ParseError
from .model import HL7_NULL, Component, Field, Group, HeaderInfo, Message, Repetition, Segment, is_null, parse_path
from .parser import Batch, clean_bytes, parse_batch, parse_message, read_header, split_batch

__all__ = [
    "ACK_CODES", "Batch", "Component", "DEFAULT_DELIMITERS", "DEFAULT_FALLBACKS", "Decoded", "Delimiters", "Field",
    "Group", "HL7DateTime", "HL7ParseError", "HL7_NULL", "HeaderInfo", "Message", "PRECISIONS", "Repetition",
    "Segment", "TABLE_0357", "build_ack", "clean_bytes", "codec_for", "decode_bytes", "format_dtm", "is_null",
    "new_control_id", "parse_batch", "parse_dtm", "parse_message", "parse_path", "read_header", "split_batch",
]
