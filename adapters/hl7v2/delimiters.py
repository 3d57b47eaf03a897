"""Encoding characters (MSH-1/MSH-2) and escape sequences.

HL7 v2.5 chapter 2, section 2.5.4 (message delimiters), 2.15.9.1-2 (MSH-1 field separator,
MSH-2 encoding characters; v2.7+ adds a fifth, the truncation character, section 2.5.5.2 of
v2.7), section 2.7 (use of escape sequences in text fields: 2.7.1 formatting codes, 2.7.2
escape sequences supporting multiple character sets, 2.7.3 hexadecimal data, 2.7.4 formatted
text ``\\.br\\``, ``\\.sp\\`` ...), and 2.7.5 highlighting (``\\H\\``/``\\N\\``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .charsets import decode_hex
from .errors import DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, HL7ParseError


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The message's delimiters, read from MSH-1 and MSH-2 (chapter 2, section 2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it should be written (4 characters, or 5 with the truncation character)."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")

    def is_plain(self, text: str) -> bool:
        """Whether ``text`` (a field as sent) holds no component, repetition or subcomponent
        separator nor escape: then it is its own one value (a code, a number, a timestamp), read
        without splitting it."""
        return (self.component not in text and self.repetition not in text
                and self.subcomponent not in text and self.escape not in text)

    @classmethod
    def from_msh(cls, field_sep: str, enc: str, segment: str = "MSH") -> "Delimiters":
        """Validate MSH-1/MSH-2 (or FHS/BHS-1/2).

        Raises HL7ParseError 101 when MSH-2 is empty, 102 when it is not 4 (or 5, v2.7+ truncation
        character) distinct characters different from the field separator and from CR/LF.
        """
        cached = _CACHE.get((field_sep, enc))
        if cached is not None:
            return cached
        if not field_sep or field_sep in "\r\n" or field_sep.isspace() or field_sep.isalnum():
            raise HL7ParseError(DATA_TYPE_ERROR, f"invalid field separator {field_sep!r}", segment, 1, 1)
        if not enc:
            raise HL7ParseError(REQUIRED_FIELD_MISSING, "encoding characters (MSH-2) missing", segment, 2, 1)
        if len(enc) not in (4, 5):
            raise HL7ParseError(DATA_TYPE_ERROR,
                                f"encoding characters {enc!r}: expected 4 (or 5 with truncation)",
                                segment, 2, 1)
        if len(set(enc)) != len(enc) or field_sep in enc or any(c in "\r\n" or c.isspace() for c in enc):
            raise HL7ParseError(DATA_TYPE_ERROR, f"encoding characters {enc!r} are not distinct delimiters",
                                segment, 2, 1)
        delims = cls(field_sep, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)
        if len(_CACHE) < 256:
            _CACHE[(field_sep, enc)] = delims
        return delims

    # -- escaping (for writing, e.g. ACKs) -------------------------------------------------

    def escape_text(self, text: str) -> str:
        """Escape delimiter characters in ``text`` for use as one leaf value (section 2.7)."""
        e = self.escape
        if not any(c in text for c in (self.field, self.component, self.repetition, e,
                                          self.subcomponent, self.truncation or "\0", "\r", "\n")):
            return text
        out = []
        table = {e: f"{e}E{e}", self.field: f"{e}F{e}", self.component: f"{e}S{e}",
                 self.subcomponent: f"{e}T{e}", self.repetition: f"{e}R{e}",
                 "\r": f"{e}X0D{e}", "\n": f"{e}.br{e}"}
        if self.truncation:
            table[self.truncation] = f"{e}P{e}"
        for ch in text:
            out.append(table.get(ch, ch))
        return "".join(out)

    # -- unescaping (on access to a leaf value) --------------------------------------------

    def unescape(self, text: str, charset: str | None = None) -> str:
        """Resolve escape sequences in one leaf value (component or subcomponent).

        * ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` -> the delimiter; ``\\P\\`` -> the truncation
          character (kept verbatim when the message defines none);
        * ``\\Xhh..\\`` -> bytes decoded in ``charset`` (adjacent hex escapes are joined first,
          so a multi-byte character split over two escapes still decodes);
        * ``\\H\\``/``\\N\\`` (highlight on/off) -> dropped;
        * ``\\.br\\`` -> newline; ``\\.sp n\\`` -> end of line plus n blank lines (n defaults to
          1); ``\\.ce\\`` -> newline; ``\\.in n\\`` -> indent following lines by n spaces;
          ``\\.ti n\\`` -> indent this line by n spaces; ``\\.sk n\\`` -> n spaces;
          ``\\.fi\\``/``\\.nf\\`` -> dropped;
        * ``\\Cxxyy\\``, ``\\Mxxyyzz\\``, ``\\Zxx\\`` and anything unknown or unterminated -> kept
          verbatim.
        """
        e = self.escape
        if e not in text:
            return text
        out: list[str] = []
        pending_hex = bytearray()
        indent = 0
        i = 0
        n = len(text)
        while i < n:
            j = text.find(e, i)
            if j < 0:
                break
            k = text.find(e, j + 1)
            if k < 0:
                break
            if j > i:
                if pending_hex:
                    out.append(decode_hex(bytes(pending_hex), charset))
                    pending_hex.clear()
                out.append(text[i:j])
            seq = text[j + 1:k]
            i = k + 1
            if seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
                try:
                    pending_hex.extend(bytes.fromhex(seq[1:]))
                    continue
                except ValueError:
                    pass
            if pending_hex:
                out.append(decode_hex(bytes(pending_hex), charset))
                pending_hex.clear()
            rep = self._simple(seq)
            if rep is not None:
                out.append(rep)
                continue
            if seq[:1] == ".":
                cmd, arg = seq[1:3], seq[3:].strip()
                num = _int_or(arg, None)
                if cmd == "br":
                    out.append("\n" + " " * indent)
                    continue
                if cmd == "sp" and (num is None or num >= 0) and (arg == "" or num is not None):
                    out.append("\n" * ((num if num is not None else 1) + 1) + " " * indent)
                    continue
                if cmd == "ce" and not arg:
                    out.append("\n")
                    continue
                if cmd in ("fi", "nf") and not arg:
                    continue
                if cmd == "sk" and num is not None:
                    out.append(" " * max(num, 0))
                    continue
                if cmd == "ti" and num is not None:
                    out.append(" " * max(num, 0))
                    continue
                if cmd == "in" and num is not None:
                    indent = max(indent + num, 0) if arg[:1] in "+-" else max(num, 0)
                    out.append(" " * indent)
                    continue
            out.append(text[j:k + 1])              # \C..\, \M..\, \Z..\, unknown: verbatim
        if pending_hex:
            out.append(decode_hex(bytes(pending_hex), charset))
        if i < n:
            out.append(text[i:])
        return "".join(out)

    def _simple(self, seq: str) -> str | None:
        if len(seq) != 1:
            return None
        if seq == "F":
            return self.field
        if seq == "S":
            return self.component
        if seq == "T":
            return self.subcomponent
        if seq == "R":
            return self.repetition
        if seq == "E":
            return self.escape
        if seq == "P" and self.truncation:
            return self.truncation
        if seq in ("H", "N"):
            return ""
        return None


_CACHE: dict[tuple[str, str], Delimiters] = {}


def _int_or(text: str, default):
    try:
        return int(text)
    except ValueError:
        return default


DEFAULT_DELIMITERS = Delimiters()
