"""MSH-18 decoding with override and fallback reporting; escape sequences incl. \\X..\\ Chinese."""

from __future__ import annotations

import pytest

from adapters.hl7v2 import Delimiters, HL7ParseError, codec_for, decode_bytes, parse_message


def _msh(charset: str = "", facility: str = "HOSP") -> str:
    return f"MSH|^~\\&|HIS|{facility}|HUB|ALLIANCE|20240305083015+0800||ADT^A01^ADT_A01|C1|P|2.5.1|||AL|NE|CHN|{charset}"


@pytest.mark.parametrize("name, codec", [
    ("UNICODE UTF-8", "utf-8"), ("UTF-8", "utf-8"), ("UNICODE", "utf-8"), ("GB 18030-2000", "gb18030"),
    ("GBK", "gb18030"), ("GB2312", "gb18030"), ("gb18030", "gb18030"), ("8859/1", "iso8859-1"),
    ("8859/15", "iso8859-15"), ("ASCII", "ascii"), ("BIG-5", "big5"), ("", None), ("NOT A CHARSET", None),
])
def test_msh18_names_map_to_codecs(name, codec):
    assert codec_for(name) == codec


def test_declared_gb18030_is_used():
    raw = (_msh("GB 18030-2000", "市第一人民医院^1.2.156^ISO") + "\rPID|1||A1^^^市一院^MR||张^三丰\r").encode("gb18030")
    msg = parse_message(raw)
    assert (msg.charset, msg.charset_declared, msg.charset_fallback) == ("gb18030", "GB 18030-2000", False)
    assert msg.sending_facility == "市第一人民医院"
    assert msg.get("PID-5-2") == "三丰"
    assert msg.get("PID-3-4") == "市一院"


def test_gbk_second_bytes_equal_to_delimiters_do_not_split():
    # 億 = 0x83 0x7C ('|'), 區 = 0x85 0x5E ('^'), 乗 = 0x81 0x5C ('\')
    raw = (_msh("GBK", "億利醫院") + "\rPID|1||X||區^乗\r").encode("gb18030")
    assert b"\x83|" in raw and b"\x85^" in raw and b"\x81\\" in raw
    msg = parse_message(raw)
    assert (msg.charset, msg.charset_declared, msg.charset_fallback) == ("gb18030", "GBK", False)
    assert msg.sending_facility == "億利醫院"
    assert msg.get("PID-5-1") == "區"
    assert msg.get("PID-5-2") == "乗"


def test_declared_ascii_but_utf8_bytes_falls_back_and_says_so():
    msg = parse_message((_msh("ASCII") + "\rPID|1||B1||李^四\r").encode("utf-8"))
    assert (msg.charset, msg.charset_declared, msg.charset_fallback) == ("utf-8", "ASCII", True)
    assert msg.get("PID-5-1") == "李"


def test_nothing_declared_but_gb18030_bytes_falls_back_to_gb18030():
    msg = parse_message((_msh("") + "\rPID|1||B1||李^四\r").encode("gb18030"))
    assert (msg.charset, msg.charset_declared, msg.charset_fallback) == ("gb18030", None, True)
    assert msg.get("PID-5") == "李"


def test_declared_utf8_but_gbk_bytes_falls_back_to_gb18030():
    msg = parse_message((_msh("UNICODE UTF-8") + "\rPID|1||B1||王^五\r").encode("gbk"))
    assert (msg.charset, msg.charset_fallback) == ("gb18030", True)
    assert msg.get("PID-5-2") == "五"


def test_declared_latin1_but_utf8_bytes_is_read_as_utf8():
    msg = parse_message((_msh("8859/1") + "\rPID|1||B1||Müller^Zoë\r").encode("utf-8"))
    assert (msg.charset, msg.charset_fallback) == ("utf-8", True)
    assert msg.get("PID-5-1") == "Müller"


def test_genuine_latin1_stays_latin1():
    msg = parse_message((_msh("8859/1") + "\rPID|1||B1||Müller\r").encode("latin-1"))
    assert (msg.charset, msg.charset_fallback) == ("iso8859-1", False)
    assert msg.get("PID-5-1") == "Müller"


def test_pure_ascii_without_declaration_is_not_a_fallback():
    msg = parse_message((_msh("") + "\rPID|1||B1\r").encode())
    assert (msg.charset, msg.charset_declared, msg.charset_fallback) == ("ascii", None, False)


def test_per_sender_override_wins_over_msh18():
    raw = (_msh("UNICODE UTF-8") + "\rPID|1||X||中文\r").encode("gb18030")
    msg = parse_message(raw, charset_override="GBK")
    assert (msg.charset, msg.charset_declared, msg.charset_fallback) == ("gb18030", "UNICODE UTF-8", False)
    assert msg.get("PID-5") == "中文"


def test_override_that_fails_falls_back():
    raw = (_msh("") + "\rPID|1||X||中文\r").encode("utf-8")
    msg = parse_message(raw, charset_override="ASCII")
    assert (msg.charset, msg.charset_fallback) == ("utf-8", True)


def test_undecodable_bytes_raise_102():
    raw = (_msh("UNICODE UTF-8") + "\rPID|1||X\r").encode() + b"\xff\xfe\xff\x80\r"
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw)
    assert (info.value.code, info.value.segment, info.value.field) == (102, "MSH", 18)
    assert info.value.header.control_id == "C1"


def test_decode_bytes_reports_codec_and_fallback():
    d = decode_bytes("张".encode("utf-8"), "ASCII")
    assert (d.text, d.charset, d.fallback) == ("张", "utf-8", True)
    assert decode_bytes(b"\xff\xff\xff", "UNICODE UTF-8", fallbacks=("utf-8",)) is None


# --- escapes (chapter 2, section 2.7) --------------------------------------------------------

D = Delimiters()


@pytest.mark.parametrize("raw, expected", [
    ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
    ("no escapes", "no escapes"),
    ("\\H\\IMPORTANT\\N\\: x", "IMPORTANT: x"),
    ("Line one\\.br\\Line two", "Line one\nLine two"),
    ("a\\.sp\\b", "a\n\nb"),
    ("a\\.sp2\\b", "a\n\n\nb"),
    ("a\\.sp 2\\b", "a\n\n\nb"),
    ("\\.ce\\Title", "\nTitle"),
    ("\\.in+4\\x\\.br\\y", "    x\n    y"),
    ("\\.ti2\\x\\.br\\y", "  x\ny"),
    ("a\\.sk3\\b", "a   b"),
    ("\\.fi\\a\\.nf\\b", "ab"),
    ("CRLF:\\X0D0A\\.", "CRLF:\r\n."),
    ("\\XE4B8AD\\\\XE69687\\", "中文"),
    ("\\XE4B8\\\\XADE6\\\\X9687\\", "中文"),          # a character split over two \X..\
    ("degree:\\XB0\\C", "degree:°C"),                # not UTF-8: read as ISO-8859-1
    ("\\C2842\\abc\\M2442\\", "\\C2842\\abc\\M2442\\"),
    ("\\Zlocal\\", "\\Zlocal\\"),
    ("unterminated \\F", "unterminated \\F"),
    ("bad hex \\XZZ\\", "bad hex \\XZZ\\"),
])
def test_unescape_utf8(raw, expected):
    assert D.unescape(raw, "utf-8") == expected


def test_hex_escape_is_decoded_in_the_message_charset_gb18030():
    assert D.unescape("\\XD6D0CEC4\\", "gb18030") == "中文"
    raw = (_msh("GB 18030-2000") + "\rNTE|1||名称:\\XD6D0CEC4\\\r").encode("gb18030")
    assert parse_message(raw).get("NTE-3") == "名称:中文"


def test_hex_escape_in_utf8_message():
    raw = (_msh("UNICODE UTF-8") + "\rNTE|1||\\XE4B8AD\\\\XE69687\\\r").encode()
    assert parse_message(raw).get("NTE-3") == "中文"


def test_hex_escape_in_ascii_message_tries_utf8():
    assert D.unescape("\\XE4B8AD\\", "ascii") == "中"


def test_escaped_delimiters_do_not_split_structure():
    raw = (_msh() + "\rOBX|1|ST|X^Y^L||5.2 \\F\\ fasting \\R\\ repeat \\S\\ a \\T\\ b\r").encode()
    obx = parse_message(raw).segment("OBX")
    assert obx.field(5).raw == "5.2 \\F\\ fasting \\R\\ repeat \\S\\ a \\T\\ b"
    assert len(obx.field(5).repetitions) == 1
    assert obx.get(5) == "5.2 | fasting ~ repeat ^ a & b"


def test_escape_text_round_trips():
    text = "a|b^c&d~e\\f"
    assert D.escape_text(text) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert D.unescape(D.escape_text(text)) == text


def test_hardcase_escapes_message():
    raw = (b"MSH|^~\\&|LIS|LAB^1.2.3^ISO|HUB|ALLIANCE|20240308120000+0800||ORU^R01^ORU_R01|LIS0004|P|2.5.1|||AL|NE||"
           b"UNICODE UTF-8\rPID|1||P100\\T\\200^^^LAB^MR||O\\E\\Brien^Mary \\S\\ Jane||19700101|F\r"
           b"OBX|2|FT|X-COMMENT^Comment^L||Line one\\.br\\Line two\\.br\\\\H\\IMPORTANT\\N\\: hemolysed\\.sp2\\end"
           b"||||||F\rOBX|3|TX|X-HEX^Hex escapes^L||CRLF:\\X0D0A\\ Chinese(UTF-8 hex):\\XE4B8AD\\\\XE69687\\ "
           b"degree:\\XB0\\C||||||F\r")
    msg = parse_message(raw)
    assert msg.get("PID-3") == "P100&200"
    assert msg.get("PID-5-1") == "O\\Brien"
    assert msg.get("PID-5-2") == "Mary ^ Jane"
    assert msg.get("OBX(1)-5") == "Line one\nLine two\nIMPORTANT: hemolysed\n\n\nend"
    assert msg.get("OBX(2)-5") == "CRLF:\r\n Chinese(UTF-8 hex):中文 degree:°C"
