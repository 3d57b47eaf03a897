"""Batches (FHS/BHS/BTS/FTS), ACK building (parsed back), DTM parsing and FHIR rendering."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from adapters.hl7v2 import (HL7ParseError, build_ack, format_dtm, parse_batch, parse_dtm, parse_message,
                            read_header, split_batch)

from .conftest import er7

MSH1 = "MSH|^~\\&||ABCHS||AUSDHSV|20070101112951||ADT^A04^ADT_A01|M1|P|2.5|||NE|NE|AU|ASCII"
MSH2 = MSH1.replace("|M1|", "|M2|")
BODY = ["EVN|A04|20060705000000", "PID|1||0000112234^^^100^A"]


def test_file_with_two_batches_splits_into_messages():
    raw = er7("FHS|^~\\&||ABCHS||AUSDHSV|20070101123401||f1.hl7||FILE-1",
              "BHS|^~\\&||ABCHS||AUSDHSV|20070101123401||||B-1", MSH1, *BODY, MSH2, *BODY, "BTS|2",
              "BHS|^~\\&||ABCHS||AUSDHSV|20070101123401||||B-2", MSH1.replace("|M1|", "|M3|"), *BODY, "BTS|1",
              "FTS|2")
    parts = split_batch(raw)
    assert [parse_message(p).control_id for p in parts] == ["M1", "M2", "M3"]
    assert parts[0] == er7(MSH1, *BODY)
    batch = parse_batch(raw)
    assert batch.file_header.get(9) == "f1.hl7"
    assert batch.file_header.get(11) == "FILE-1"
    assert [b.get(11) for b in batch.batch_headers] == ["B-1", "B-2"]
    assert batch.control_id == "B-1"
    assert batch.declared_message_count == 3
    assert batch.file_trailer.get(1) == "2"
    assert [m.control_id for m in batch.parse_messages()] == ["M1", "M2", "M3"]


def test_concatenated_messages_without_envelope_split():
    assert len(split_batch(er7(MSH1, *BODY, MSH2, *BODY, sep="\n"))) == 2


def test_batch_with_one_message_parses_as_that_message():
    raw = er7("BHS|^~\\&||ABCHS||AUSDHSV|20070101123401||||B-1", MSH1, *BODY, "BTS|1")
    msg = parse_message(raw)
    assert msg.control_id == "M1"
    assert [s.name for s in msg.segments] == ["MSH", "EVN", "PID"]


def test_parse_message_refuses_a_batch_of_several_messages():
    with pytest.raises(HL7ParseError) as info:
        parse_message(er7("BHS|^~\\&", MSH1, *BODY, MSH2, *BODY, "BTS|2"))
    assert info.value.code == 100
    assert info.value.header.control_id == "M1"


@pytest.mark.parametrize("segments, message", [
    (["BHS|^~\\&", "EVN|A04", "PID|1", "BTS|1"], "EVN segment outside a message (MSH missing)"),
    (["BHS|^~\\&", MSH1, "EVN|A04", "BHS|^~\\&", "PID|1", "BTS|1"], "BHS inside an open batch (BTS missing)"),
    (["FHS|^~\\&", MSH1, "FHS|^~\\&", "FTS|1"], "FHS must be the first segment"),
    (["FHS|^~\\&", MSH1, "FTS|1", MSH2], "MSH after FTS"),
])
def test_malformed_envelopes_raise_100(segments, message):
    with pytest.raises(HL7ParseError) as info:
        split_batch(er7(*segments))
    assert (info.value.code, info.value.message) == (100, message)


# --- ACK ------------------------------------------------------------------------------------

NOW = datetime(2024, 3, 11, 14, 5, 0, tzinfo=timezone(timedelta(hours=8)))


def test_ack_aa_swaps_sender_and_receiver_and_keeps_version_and_charset():
    msg = parse_message(er7("MSH|^~\\&|LIS|LAB^1.2.3^ISO|HUB|ALLIANCE|20240311140000+0800||ORU^R01^ORU_R01|LIS0007|"
                            "P|2.5.1|||AL|NE||UNICODE UTF-8", "PID|1"))
    raw = build_ack(msg, "AA", control_id="ACK0001", now=NOW)
    assert raw == (b"MSH|^~\\&|HUB|ALLIANCE|LIS|LAB^1.2.3^ISO|20240311140500+0800||ACK^R01^ACK|ACK0001|P|2.5.1"
                   b"||||||UNICODE UTF-8\rMSA|AA|LIS0007\r")
    ack = parse_message(raw)
    assert (ack.message_type, ack.trigger, ack.structure) == ("ACK", "R01", "ACK")
    assert ack.get("MSA-2") == "LIS0007"


def test_ack_with_error_is_encoded_in_the_original_charset_and_parses_back():
    raw_in = ("MSH|^~\\&|HIS|市一院|HUB|ALLIANCE|20240305083015+0800||ADT^A01^ADT_A01|HIS0001|P|2.5.1|||AL|NE|CHN|"
              "GB 18030-2000\rPID|1||X\r").encode("gb18030")
    msg = parse_message(raw_in)
    error = HL7ParseError(101, "患者姓名 PID-5 缺失", segment="PID", field=5, position=1)
    raw = build_ack(msg, "AE", error, now=NOW)
    assert "患者姓名".encode("gb18030") in raw
    ack = parse_message(raw)
    assert ack.charset == "gb18030" and ack.charset_fallback is False
    assert ack.get("MSH-5") == "HIS" and ack.get("MSH-6") == "市一院"
    assert len(ack.control_id) == 20
    assert ack.get("MSA-1") == "AE" and ack.get("MSA-2") == "HIS0001"
    assert ack.get("MSA-3") == "患者姓名 PID-5 缺失"
    err = ack.segment("ERR")
    assert err.field(2).raw == "PID^1^5"
    assert err.field(3).raw == "101^Required field missing^HL70357"
    assert err.get(4) == "E"
    assert err.get(7) == "患者姓名 PID-5 缺失"


def test_ack_for_v23_uses_err_1_and_custom_delimiters():
    msg = parse_message(b"MSH*^~#&*LEGACY*OLD*HUB*ALL*20240309070000**ADT^A01*LEG0001*P*2.3\rPID*1\r")
    error = HL7ParseError(102, "bad date * here", segment="PID", field=7, position=1)
    raw = build_ack(msg, "AE", error, control_id="A1", now=NOW)
    assert raw == (b"MSH*^~#&*HUB*ALL*LEGACY*OLD*20240311140500+0800**ACK^A01^ACK*A1*P*2.3\r"
                   b"MSA*AE*LEG0001*bad date #F# here\rERR*PID^1^7^102&Data type error&HL70357\r")
    assert parse_message(raw).get("MSA-3") == "bad date * here"


def test_ack_for_delimiters_with_letters_uses_the_standard_set():
    """python-hl7's sample uses 'r' as repetition separator; echoing it, "ERR" and "HL70357"
    would split. The ACK is written with |^~\\& and the echoed header values escaped."""
    msg = parse_message(b"MSH!$r?@!LIP|X!LIP!LB!LB!20111207121030!!RSP$K11$RSP_K11!430102!D!2.5\rPID!1\r")
    raw = build_ack(msg, "AE", HL7ParseError(102, "bad PID-3", segment="PID", field=3), control_id="A1", now=NOW)
    ack = parse_message(raw)
    assert raw.startswith(b"MSH|^~\\&|LB|LB|LIP\\F\\X|LIP|")
    assert (ack.message_type, ack.trigger) == ("ACK", "K11")
    assert ack.msh.get(5) == "LIP|X" and ack.get("MSA-1") == "AE" and ack.get("MSA-2") == "430102"
    assert ack.segment("ERR").field(3).raw == "102^Data type error^HL70357"


def test_ack_for_unparsable_input_uses_what_could_be_read():
    raw_in = b"MSH|^~\\&|SEND|FAC|RCV|RFAC|20080115153000|||0123456789|P|2.6\r"
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw_in)
    raw = build_ack(info.value.header, "AR", info.value, control_id="X", now=NOW)
    assert raw == (b"MSH|^~\\&|RCV|RFAC|SEND|FAC|20240311140500+0800||ACK^^ACK|X|P|2.6\r"
                   b"MSA|AR|0123456789|message type (MSH-9) missing\r"
                   b"ERR||MSH^1^9|101^Required field missing^HL70357|E|||message type (MSH-9) missing\r")


def test_ack_when_nothing_is_readable():
    header = read_header(b"\x00garbage")
    raw = build_ack(header, "AR", HL7ParseError(100, "not HL7"), control_id="X", now=NOW,
                    sending_application=["HUB", "1.2.156.1", "ISO"])
    ack = parse_message(raw)
    assert ack.msh.field(3).raw == "HUB^1.2.156.1^ISO"
    assert ack.segment("ERR").field(3).raw == "100^Segment sequence error^HL70357"


def test_ack_rejects_unknown_codes():
    with pytest.raises(ValueError):
        build_ack(read_header(b""), "OK")


def test_ack_v27_drops_msa3_and_keeps_truncation_character():
    msg = parse_message(er7("MSH|^~\\&#|A|B|C|D|20240101||ORU^R01^ORU_R01|T1|T|2.7", "PID|1"))
    raw = build_ack(msg, "CE", HL7ParseError(203, "version"), control_id="Z", now=NOW, text="ignored in 2.7")
    assert raw.split(b"\r")[0] == b"MSH|^~\\&#|C|D|A|B|20240311140500+0800||ACK^R01^ACK|Z|T|2.7"
    assert raw.split(b"\r")[1] == b"MSA|CE|T1"


# --- DTM ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, precision, fhir_dt, fhir_date", [
    ("2024", "year", "2024", "2024"),
    ("202403", "month", "2024-03", "2024-03"),
    ("20240311", "day", "2024-03-11", "2024-03-11"),
    ("2024031114", "hour", "2024-03-11T14:00:00", "2024-03-11"),
    ("202403111405", "minute", "2024-03-11T14:05:00", "2024-03-11"),
    ("20240311140502", "second", "2024-03-11T14:05:02", "2024-03-11"),
    ("20240311140502.1234", "fraction", "2024-03-11T14:05:02.1234", "2024-03-11"),
    ("20240311140502+0800", "second", "2024-03-11T14:05:02+08:00", "2024-03-11"),
    ("202403111405-0430", "minute", "2024-03-11T14:05:00-04:30", "2024-03-11"),
    ("20240311+0800", "day", "2024-03-11", "2024-03-11"),
])
def test_dtm_precision_and_fhir_rendering(value, precision, fhir_dt, fhir_date):
    dtm = parse_dtm(value)
    assert dtm.precision == precision
    assert dtm.to_fhir_datetime() == fhir_dt
    assert dtm.to_fhir_date() == fhir_date


def test_dtm_default_offset_and_instant():
    dtm = parse_dtm("20240311140502")
    assert dtm.to_fhir_datetime(default_offset="+08:00") == "2024-03-11T14:05:02+08:00"
    assert dtm.to_fhir_instant("+0800") == "2024-03-11T14:05:02+08:00"
    assert parse_dtm("20240311140502-0500").to_fhir_instant("+08:00") == "2024-03-11T14:05:02-05:00"
    assert parse_dtm("20240311").to_fhir_instant("Z") == "2024-03-11T00:00:00Z"
    with pytest.raises(ValueError):
        dtm.to_fhir_instant()
    assert parse_dtm("20240311140502.5+0800").to_datetime() == datetime(2024, 3, 11, 14, 5, 2, 500000,
                                                                        tzinfo=timezone(timedelta(hours=8)))


@pytest.mark.parametrize("value", ["", "24", "2024-03-11", "20241301", "20240230", "2024031124", "20240311146000",
                                   "20240311140502+1500", "20240311140502.12345", "20240311 1405", "abc"])
def test_invalid_dtm_raises_102(value):
    with pytest.raises(HL7ParseError) as info:
        parse_dtm(value)
    assert info.value.code == 102


def test_format_dtm():
    assert format_dtm(NOW) == "20240311140500+0800"
    assert format_dtm(NOW.replace(tzinfo=None), "minute") == "202403111405"
    assert format_dtm(NOW, "day") == "20240311"
