"""Character sets: MSH-18 names, and decoding a message's bytes with a fallback chain.

HL7 v2.5 chapter 2, section 2.15.9.18 (MSH-18 Character Set, HL7 table 0211) and section
2.7.6/2.A (character set handling). When MSH-18 is empty the default is 7-bit ASCII (ISO IR-6).
Only the first repetition of MSH-18 (the default character set of the message) is used; later
repetitions name alternate sets for ``\\C..\\``/``\\M..\\`` switching, which this adapter keeps
verbatim.

The delimiters are ASCII, so MSH-18 can be located in the raw bytes before decoding; but a
GB18030/GBK second byte can be 0x5C, 0x5E, 0x7C or 0x7E (``\\ ^ | ~``), so the message itself is
decoded *before* it is split on delimiters.
"""

from __future__ import annotations

import codecs
from functools import lru_cache
from dataclasses import dataclass

#: Codecs tried, in order, after the declared (or overridden) one fails.
DEFAULT_FALLBACKS: tuple[str, ...] = ("utf-8", "gb18030")

_TABLE_0211 = {
    # HL7 table 0211 values (normalised: upper case, no spaces/underscores/hyphens)
    "ASCII": "ascii",
    "ISOIR6": "ascii",
    "UNICODE": "utf-8",        # formally UCS-2, but with single-byte delimiters in practice UTF-8
    "UNICODEUTF8": "utf-8",
    "UNICODEUTF16": "utf-16",
    "UNICODEUTF32": "utf-32",
    "GB180302000": "gb18030",
    "GB180302005": "gb18030",
    "GB18030": "gb18030",
    "GBK": "gb18030",          # GBK and GB2312 are subsets of GB18030: decode all as GB18030
    "GB2312": "gb18030",
    "GB231280": "gb18030",
    "CP936": "gb18030",
    "EUCCN": "gb18030",
    "BIG5": "big5",
    "KSX1001": "euc_kr",
    "ISOIR87": "iso2022_jp",
    "ISOIR159": "iso2022_jp_1",
    "ISOIR14": "shift_jis",
    "ISOIR100": "iso8859-1",
    "ISOIR192": "utf-8",
    "UTF8": "utf-8",
    "UTF16": "utf-16",
    "USASCII": "ascii",
    "LATIN1": "iso8859-1",
    "WINDOWS1252": "cp1252",
    "CP1252": "cp1252",
}

_SINGLE_BYTE = {"ascii", "latin-1", "iso8859-1", "cp1252"} | {f"iso8859-{n}" for n in range(2, 16)}


@lru_cache(maxsize=256)
def codec_for(name: str | None) -> str | None:
    """Map an MSH-18 value (or a caller's override) to a Python codec name, or ``None``.

    Accepts table 0211 spellings ("UNICODE UTF-8", "GB 18030-2000", "8859/1") and common
    non-standard ones ("UTF-8", "GBK", "GB2312", "ISO-8859-1"). Unknown names give ``None``.
    """
    if not name:
        return None
    key = "".join(ch for ch in name.upper() if ch not in " _-")
    if key in _TABLE_0211:
        return _TABLE_0211[key]
    if key.startswith("8859/"):                     # table 0211: 8859/1 ... 8859/15
        part = key[5:]
        if part.isdigit() and 1 <= int(part) <= 15:
            return f"iso8859-{int(part)}"
        return None
    if key.startswith("ISO8859"):
        part = key[7:].lstrip("/")
        if part.isdigit() and 1 <= int(part) <= 15:
            return f"iso8859-{int(part)}"
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        return None


@dataclass(frozen=True, slots=True)
class Decoded:
    """Result of :func:`decode_bytes`: the text and which codec produced it."""

    text: str
    charset: str
    fallback: bool


def _try(raw: bytes, codec: str) -> str | None:
    try:
        return raw.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def decode_bytes(raw: bytes, declared: str | None, override: str | None = None,
                 fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS) -> Decoded | None:
    """Decode a message's bytes: override, else MSH-18, else ASCII; then the fallback chain.

    * ``override`` (a per-sender setting) replaces the declared set; it counts as "declared"
      for the ``fallback`` flag.
    * Declared ASCII or nothing: ASCII, else the fallbacks (UTF-8, then GB18030).
    * Declared single-byte set (8859/x): used, unless the bytes are valid UTF-8 with non-ASCII
      characters -- a frequent mis-declaration that a single-byte decode would silently garble.
    * Any other declared set: used; on failure, the fallbacks.

    ``fallback`` is true when the codec used is not the one the declaration (or override) names.
    Returns ``None`` when nothing in the chain decodes the bytes.
    """
    wanted_name = override if override else declared
    wanted = codec_for(wanted_name)
    if raw.isascii():
        if wanted is None or wanted in ("utf-16", "utf-32"):
            return Decoded(raw.decode("ascii"), "ascii", wanted is not None or bool(wanted_name))
        if wanted.startswith("iso2022"):
            text = _try(raw, wanted)
            if text is not None:
                return Decoded(text, wanted, False)
        return Decoded(raw.decode("ascii"), wanted, False)
    if wanted is None or wanted == "ascii":
        chain = [c for c in fallbacks]
    elif wanted in _SINGLE_BYTE:
        if _try(raw, "utf-8") is not None and "utf-8" in fallbacks:
            return Decoded(raw.decode("utf-8"), "utf-8", True)
        chain = [wanted] + [c for c in fallbacks if c != wanted]
    else:
        chain = [wanted] + [c for c in fallbacks if c != wanted]
    for codec in chain:
        text = _try(raw, codec)
        if text is not None:
            return Decoded(text, codec, codec != wanted)
    return None


def decode_hex(data: bytes, charset: str | None) -> str:
    """Decode the bytes of a ``\\Xhh..\\`` escape in the message's character set.

    HL7 v2.5 chapter 2, section 2.7.3: hexadecimal data is bytes in the message's character set.
    Falls back to UTF-8 / GB18030 when the message set is ASCII, and finally to ISO-8859-1 (which
    always succeeds: 0xB0 becomes the degree sign), so an escape never makes a value unreadable.
    """
    chain: list[str] = []
    if charset and charset not in ("ascii",):
        chain.append(charset)
    else:
        chain.extend(("ascii", "utf-8", "gb18030"))
    for codec in chain:
        text = _try(data, codec)
        if text is not None:
            return text
    return data.decode("latin-1")
