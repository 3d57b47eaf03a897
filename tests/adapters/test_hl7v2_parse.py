"""parse_message: framing, line endings, delimiters, header values, model navigation."""

from __future__ import annotations

import pytest

from adapters.hl7v2 import HL7_NULL, HL7ParseError, is_null, parse_message, parse_path

from .conftest import MSH_ORU, er7


def test_header_values_come_from_msh(oru_bytes):
    msg = parse_message(oru_bytes)
    assert (msg.message_type, msg.trigger, msg.structure) == ("ORU", "R01", "ORU_R01")
    assert msg.control_id == "LIS0007"
    assert msg.version == "2.5.1"
    assert msg.processing_id == "P"
    assert msg.sending_application == "LIS"
    assert msg.sending_facility == "LAB"
    assert msg.msh.field(4).raw == "LAB^1.2.3^ISO"
    assert msg.receiving_application == "HUB"
    assert msg.timestamp == "20240311140000+0800"
    assert [s.name for s in msg.segments] == ["MSH", "PID", "PV1", "ORC", "OBR", "OBX", "NTE", "OBX", "ORC",
                                              "OBR", "OBX", "SPM", "ZLS"]


def test_structure_is_derived_when_msh_9_3_is_absent():
    msg = parse_message(er7("MSH|^~\\&|A|B|C|D|20240101||ADT^A04|X1|P|2.3", "PID|1"))
    assert msg.structure == "ADT_A04"


def test_msh_numbering_msh1_is_the_separator_msh2_the_encoding_characters(oru_bytes):
    msh = parse_message(oru_bytes).msh
    assert msh.get(1) == "|"
    assert msh.get(2) == "^~\\&"
    assert msh.get("MSH-9-2") == "R01"
    assert msh.field(2).repetitions[0].components[0].subcomponents == ["^~\\&"]
    assert msh.raw.startswith("MSH|^~\\&|LIS|")


def test_paths_are_one_based_with_repetition_and_occurrence(oru_bytes):
    msg = parse_message(oru_bytes)
    assert msg.get("PID-3") == "MRN77"
    assert msg.get("PID-3(2)-1") == "330102198001011234"
    assert msg.get("PID-3(2)-4-2") == "2.16.156.10011.1.3"
    assert msg.get("PID-3(3)-1") is None
    assert msg.get("PID-5-1") == "吴"
    assert msg.get("PID.5.2") == "磊"
    assert msg.get("OBX(2)-5") == "15.2"
    assert msg.get("OBX(3)-3-2") == "Glucose"
    assert msg.get("OBX(9)-5") is None
    assert msg.get("PID-99") is None
    with pytest.raises(ValueError):
        msg.get("PID-3(0)")
    with pytest.raises(ValueError):
        msg.get("nonsense")
    assert parse_path("OBX(2)-5(3)-1-2") == ("OBX", 2, 5, 3, 1, 2)


def test_segment_get_keywords_rep_is_zero_based(oru_bytes):
    pid = parse_message(oru_bytes).segment("PID")
    assert pid.get(3) == "MRN77"
    assert pid.get(3, rep=1, comp=4, sub=1) == "CN"
    assert pid.get(3, rep=1, comp=4, sub=3) == "ISO"
    assert pid.get(3, rep=2) is None
    assert pid.get("PID-3(2)-5") == "NNCHN"


def test_field_repetition_component_subcomponent_objects(oru_bytes):
    pid = parse_message(oru_bytes).segment("PID")
    field = pid.field(3)
    assert len(field.repetitions) == 2
    second = field.repetitions[1]
    assert [c.raw for c in second.components] == ["330102198001011234", "", "", "CN&2.16.156.10011.1.3&ISO",
                                                   "NNCHN"]
    assert second.components[3].subcomponents == ["CN", "2.16.156.10011.1.3", "ISO"]
    assert second.component(5).value == "NNCHN"
    assert second.component(9).value is None
    assert field.value == "MRN77"
    assert pid.field(40).repetitions == []
    assert not pid.field(2)


def test_z_segments_are_kept_and_unescaped(oru_bytes):
    msg = parse_message(oru_bytes)
    zls = msg.segment("ZLS")
    assert zls.get(1, comp=2) == "value"
    assert zls.get(2) == "&amp"
    assert msg.get("ZLS-1-1") == "custom"


def test_groups_under_each_obr(oru_bytes):
    msg = parse_message(oru_bytes)
    groups = msg.groups("OBR", members={"OBX", "NTE", "SPM"})
    assert [[s.name for s in g.segments] for g in groups] == [["OBR", "OBX", "NTE", "OBX"], ["OBR", "OBX", "SPM"]]
    assert groups[0].head.get(2) == "ORD1"
    assert [o.get(5) for o in groups[0].segments_named("OBX")] == ["9.8", "15.2"]
    assert groups[1].get("SPM-4") == "BLD"
    orders = msg.groups("ORC", until={"ZLS"})
    assert [[s.name for s in g.segments] for g in orders] == [["ORC", "OBR", "OBX", "NTE", "OBX"],
                                                             ["ORC", "OBR", "OBX", "SPM"]]
    nested = orders[0].groups("OBX", members={"NTE"})
    assert [[s.name for s in g.segments] for g in nested] == [["OBX", "NTE"], ["OBX"]]


def test_line_endings_cr_lf_crlf_and_mixed_give_the_same_segments():
    segs = [MSH_ORU, "PID|1||X^^^H^MR", "OBX|1|ST|A^B^L||v"]
    expected = [["MSH", "|", "^~\\&"], ["PID", "1", ""], ["OBX", "1", "ST"]]
    for raw in (er7(*segs), er7(*segs, sep="\n"), er7(*segs, sep="\r\n"),
                (segs[0] + "\r\n" + segs[1] + "\n" + segs[2] + "\r").encode(),
                (segs[0] + "\r\r\n\n" + segs[1] + "\r  \r" + segs[2]).encode()):
        msg = parse_message(raw)
        assert [s.fields[:3] for s in msg.segments] == expected
        assert msg.get("OBX-5") == "v"


def test_mllp_framing_and_utf8_bom_are_removed():
    body = er7(MSH_ORU, "PID|1||X")
    for raw in (b"\x0b" + body + b"\x1c\r", b"\xef\xbb\xbf" + body, b"\x0b\xef\xbb\xbf" + body + b"\x1c\r",
                b"\r\n" + body + b"\r\n\r\n"):
        msg = parse_message(raw)
        assert msg.control_id == "LIS0007"
        assert msg.get("PID-3") == "X"


def test_utf16_with_bom_is_accepted():
    body = (MSH_ORU + "\rPID|1||王\r").encode("utf-16")
    assert parse_message(body).get("PID-3") == "王"


def test_custom_delimiters_and_escape_character():
    raw = b"MSH*^~#&*LEGACY*OLDHOSP*HUB*ALLIANCE*20240309070000**ADT^A01*LEG0001*P*2.3\r\n" \
          b"PID*1**A1001^^^OLDHOSP^MR~99-88-77^^^SSA^SS**DOE^JOHN #S# JR**19501212*M\r\n"
    msg = parse_message(raw)
    d = msg.delimiters
    assert (d.field, d.component, d.repetition, d.escape, d.subcomponent, d.truncation) == \
        ("*", "^", "~", "#", "&", None)
    assert msg.msh.get(1) == "*" and msg.msh.get(2) == "^~#&"
    assert msg.get("PID-5-2") == "JOHN ^ JR"
    assert msg.get("PID-3(2)-1") == "99-88-77"


def test_entirely_different_delimiter_set():
    raw = b"MSH!$r?@!LIP!LIP!LB!LB!20111207121030!!RSP$K11$RSP_K11!430102!D!2.5\rPID!1!!A$B@C$$D?S?Erx\r"
    msg = parse_message(raw)
    assert (msg.message_type, msg.trigger) == ("RSP", "K11")
    pid = msg.segment("PID")
    assert pid.get(3, comp=2, sub=2) == "C"
    assert pid.get(3, comp=4) == "D$E"
    assert pid.get(3, rep=1) == "x"


def test_truncation_character_v27():
    raw = er7("MSH|^~\\&#|A|B|C|D|20240101||ORU^R01^ORU_R01|T1|P|2.7", "NTE|1||cut here\\P\\ and # stays")
    msg = parse_message(raw)
    assert msg.delimiters.truncation == "#"
    assert msg.msh.get(2) == "^~\\&#"
    assert msg.get("NTE-3") == "cut here# and # stays"


def test_truncation_escape_without_truncation_character_is_kept():
    msg = parse_message(er7(MSH_ORU, "NTE|1||a\\P\\b"))
    assert msg.get("NTE-3") == "a\\P\\b"


def test_hl7_null_is_returned_as_two_double_quotes():
    msg = parse_message(er7(MSH_ORU, 'PID|1||12345^^^HOSPB^MR||WANG^FANG^""||19990909|F|||""'))
    assert msg.get("PID-5-3") == HL7_NULL
    assert is_null(msg.get("PID-11"))
    assert msg.segment("PID").field(11).is_null


def test_leaf_values_are_not_trimmed():
    msg = parse_message(er7(MSH_ORU, "PID|||  MRN11  ^^^HOSPA^MR"))
    assert msg.get("PID-3") == "  MRN11  "


@pytest.mark.parametrize("raw, code, field", [
    (b"", 100, None),
    (b"PID|1||X\r", 100, None),
    (b"EVN|A04|20060705000000\rPID|1\r", 100, None),
    (b"MSH|||||||||||||||||||", 101, 2),
    (b"MSH|^~\\||||||||||2.7", 102, 2),
    (b"MSH|^&&^|A|B|C|D|2008||ADT^A01|1|P|2.6\r", 102, 2),
    (b"MSH|^~\\&#$|A|B|C|D|2008||ADT^A01|1|P|2.7\r", 102, 2),
    (b"MSH|^~\\&|A|B|C|D|20080115153000|||0123456789|P|2.6\r", 101, 9),
    (b"MSH|^~\\&|A|B|C|D|20080115153000||ADT^A01|   |P|2.6\r", 101, 10),
    (b"MSH|^~\\&|A|B|C|D|20080115153000||{}|1|P|2.5\r", 200, 9),
    (b"MSH|^~\\&|A|B|C|D|20080115153000||ADT^A0001|1|P|2.5\r", 201, 9),
    (b"MSH|^~\\&|A|B|C|D|2008||ADT^A01|1|P|2.5\rPID|1\r999|||x\r", 100, None),
    (b"MSH|^~\\&|A|B|C|D|2008||ADT^A01|1|P|2.5\rPID1\r", 100, None),
    (b"MSH|^~\\&|A|B|C|D|2008||ADT^A01|1|P|2.5\rPID|1\rMSH|^~\\&|A|B|C|D|2008||ADT^A01|2|P|2.5\r", 100, None),
])
def test_malformed_input_raises_coded_errors(raw, code, field):
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw)
    assert info.value.code == code
    assert info.value.field == field
    assert info.value.header is not None          # always something to build an ACK from


def test_error_carries_the_readable_header():
    with pytest.raises(HL7ParseError) as info:
        parse_message(b"MSH|^~\\&|SEND|FAC|RCV|RFAC|20080115153000|||0123456789|P|2.6\r")
    header = info.value.header
    assert header.control_id == "0123456789"
    assert header.sending_application == "SEND"
    assert header.version == "2.6"
    assert str(info.value) == "HL7 101 Required field missing at MSH(1)-9: message type (MSH-9) missing"


def test_str_input_is_accepted_as_text():
    msg = parse_message(MSH_ORU + "\rPID|1||张\r")
    assert msg.get("PID-3") == "张"
    assert msg.charset == "utf-8"
