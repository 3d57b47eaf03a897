"""Property test for the unseen corpus: mutated corpus messages through parse + convert.

Issue 3: "a further corpus, not in shared/, will also be run through the hub" -- every message
either normalized into valid FHIR or rejected with a specific reason, never an unhandled
exception. Hypothesis draws a corpus message and one to three damages of the kinds real feeds
show: truncated at any byte, segments dropped or duplicated, other delimiters declared (and used,
or not), MSH-18 and the actual byte encoding disagreeing, escape sequences cut in half, huge
fields, repetition separators in every field, empty components, an OBX-5 that is not of its OBX-2
type, dates in every HL7 precision and garbage, unknown versions, Z-segments anywhere, LF / CRLF
endings. The only errors allowed are the documented ones: HL7ParseError from the parser,
MappingError (UnsupportedMessage included) from the mapping, each with a table 0357 code; every
resource produced must validate with fhir.resources (the hub's validator), and the ACK answering
the outcome (AA, or AE/AR with ERR) must be built and read back.

Derandomized (the same examples on every run) and bounded to stay well under a minute.
"""

from __future__ import annotations

import csv

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from adapters.hl7v2 import HL7ParseError, build_ack, parse_message, read_header  # noqa: E402
from mappings import FacilityProfile, MappingError, convert  # noqa: E402

from .conftest import CORPUS_DIR, HARDCASES, needs_corpus, validate  # noqa: E402

pytestmark = [pytest.mark.slow, needs_corpus]

TABLE_0357 = {100, 101, 102, 103, 200, 201, 202, 203, 206, 207}
MAPPED = ("ADT", "ORU", "ORM", "OML", "OMI", "OMG", "OUL", "MDM", "SIU", "VXU")


def _seeds() -> list[bytes]:
    """Hard cases and every third indexed message of a mapped type that parses and converts."""
    with open(CORPUS_DIR / "index.tsv", encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t")
                if r["msg_type^trigger(MSH-9.1^9.2)"].strip()[:3] in MAPPED]
    paths = sorted(HARDCASES.glob("*.hl7")) + [CORPUS_DIR / r["path"] for r in rows[::3]]
    seeds = []
    for path in paths:
        raw = path.read_bytes()
        try:
            convert(parse_message(raw), "HOSPA")
        except (HL7ParseError, MappingError):
            continue
        seeds.append(raw)
    return seeds


SEEDS = _seeds() if (CORPUS_DIR / "index.tsv").is_file() else [b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r"]

DATES = ["2024", "202403", "20240305", "2024030512", "202403051230", "20240305123045",
         "20240305123045.1", "20240305123045.1234", "20240305123045+0800", "20240305123045.12-0530",
         "20240305+0800", "19000101", "99991231235959", "20241399", "20240230", "2024-03-05",
         "2024-03-05T12:30:45Z", "0000", "00000000", "1e5", "yesterday", "24030512", "20240305123099",
         "20240305126045", "20240305123045+2500", "20240305123045+08", "\\X32\\024", "^20240305", "~"]
OBX_TYPES = ["NM", "SN", "ST", "TX", "FT", "CE", "CWE", "CNE", "DT", "TS", "DTM", "TM", "NA", "ED",
             "RP", "CX", "XPN", "XAD", "ID", "IS", "NR", "MO", "CP", "ZZ", "", "nm"]
OBX_VALUES = ["7.2", "-0", "<5", ">=10", "^1^:^128", "^10^-^20", "1e999", "NaN", "Inf", "12,5",
              "^^^^", "~~~", "abc", "20240305", "1230", "25:61", "^application^pdf^Base64^JVBERi0=",
              "^text^plain^Base64^***", "Positive^Pos^L", "&&&", '""', "9" * 400, "\\H\\bold\\N\\",
              "1:2", "1/2", "+", "-", "^<^5", "^>^", "a^b^c^d^e^f^g^h^i^j^k"]
VERSIONS = ["2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.9",
            "3.0", "9.9", "", "V2.5", "2.5^CHN", "abc"]
CHARSETS = ["", "ASCII", "8859/1", "8859/15", "UNICODE UTF-8", "UNICODE", "GB 18030-2000",
            "GB18030", "CNS 11643-1992", "BIG-5", "ISO IR87", "KOI8-R", "UTF-16", "EBCDIC", "?"]
ENCODINGS = ["utf-8", "gb18030", "latin-1", "big5", "shift_jis", "cp1252", "utf-16"]
ZSEGS = ["ZDS|1.2.3.4.5^^Application^DICOM", "ZXX|", "ZPI|1|中文^^^~|&&&", "ZZZ" + "|x" * 300,
         "Z01|\\E\\|\\X0D\\", "ZDS|^^^"]
ESCAPES = ["\\", "\\X", "\\X4", "\\XE4B8", "\\E", "\\F", "\\.br", "\\H", "\\Z", "\\M", "\\C", "\\S\\",
           "\\X0D\\", "\\X00\\", "\\N", "\\.sp", "\\T", "\\R"]
DATE_FIELDS = {"MSH": (7,), "EVN": (2, 6), "PID": (7, 29), "PV1": (44, 45), "ORC": (9, 15),
               "OBR": (6, 7, 8, 14, 22, 25), "OBX": (12, 14, 19), "TXA": (4, 6, 7), "SCH": (11,),
               "TQ1": (7, 8), "AIS": (4,), "RXA": (3, 4, 16), "SPM": (17, 18), "MRG": (1,)}


#: a quirky HIS as the hub connects one (docs/mappings.md): charset hint, moved visit number, local codes
QUIRKY = FacilityProfile.from_dict("HOSPA", {
    "timezone": "-05:00", "charset": "GB18030", "source": "LegacyHIS",
    "assigning_authorities": {"ZHOSP": "HOSPA"}, "fields": {"PV1-19": "PV1-50"},
    "code_tables": {"PID-8": {"1": "M", "2": "F"}}, "coding_systems": {"L": "urn:yilian:hospa:lis"},
    "extra_identifiers": [{"field": "PID-2", "kind": "health-card", "type": "HC"}]})


def _lines(raw: bytes) -> list[str]:
    text = raw.decode("utf-8", "replace").lstrip("\ufeff")
    return [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]


def _set_field(line: str, n: int, value: str) -> str:
    fields = line.split("|")
    if line.startswith("MSH"):
        n -= 1                      # MSH-1 is the separator itself
    if n < 1:
        return line
    fields += [""] * (n + 1 - len(fields))
    fields[n] = value
    return "|".join(fields)


@st.composite
def damaged(draw) -> bytes:
    raw = draw(st.sampled_from(SEEDS))
    lines = _lines(raw)
    ending, encoding = "\r", "utf-8"
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from([
            "truncate", "drop", "duplicate", "delimiters", "charset", "escape", "huge", "repeat",
            "components", "obx", "date", "version", "zsegment", "ending", "swap"]))
        # segment i: MSH itself only now and then (a broken header is the parser's first check)
        last = max(0, len(lines) - 1)
        i = draw(st.integers(0, last) if draw(st.integers(0, 9)) == 0 else st.integers(min(1, last), last))
        line = lines[i] if lines else ""
        if op == "truncate":
            text = ending.join(lines)
            cut = draw(st.integers(0, len(text)) if draw(st.booleans()) else st.integers(len(text) // 2, len(text)))
            lines = _lines(text[:cut].encode())
        elif op == "drop" and len(lines) > 1 and i:
            del lines[i]
        elif op == "duplicate" and i:
            lines.insert(i, line)
        elif op == "swap" and len(lines) > 2:
            j = draw(st.integers(1, len(lines) - 1))
            lines[max(i, 1)], lines[j] = lines[j], lines[max(i, 1)]
        elif op == "delimiters" and lines:
            # declare other encoding characters; use them in the rest of the message or not
            new = draw(st.sampled_from(["#@!$", "^~\\&#", "^~\\", "^", "^^^^", "|~\\&", "^~\\&&", "", "^~&\\"]))
            msh = lines[0]
            if msh.startswith("MSH") and len(msh) > 8:
                old = msh[4:8]
                rest = msh[8:]
                if draw(st.booleans()) and len(new) >= 4 and len(set(new[:4])) == 4:
                    table = str.maketrans(old, new[:4])
                    lines = [ln.translate(table) for ln in lines]
                    lines[0] = "MSH|" + new + lines[0][8:]
                else:
                    lines[0] = "MSH|" + new + rest
        elif op == "charset" and lines:
            lines[0] = _set_field(lines[0], 18, draw(st.sampled_from(CHARSETS)))
            encoding = draw(st.sampled_from(ENCODINGS))
        elif op == "escape" and line:
            k = draw(st.integers(0, len(line)))
            lines[i] = line[:k] + draw(st.sampled_from(ESCAPES)) + line[k:]
        elif op == "huge" and line:
            n = draw(st.integers(1, 25))
            lines[i] = _set_field(line, n, draw(st.sampled_from(["X", "中", "9", "^", "~", "&", "\\E\\"])) * 70_000)
        elif op == "repeat" and line:
            if not line.startswith("MSH"):
                head, *fields = line.split("|")
                lines[i] = "|".join([head] + [f + "~" + f if f else "~" for f in fields])
        elif op == "components" and line:
            n = draw(st.integers(1, 40))
            lines[i] = _set_field(line, n, draw(st.sampled_from(["^", "^^^^^^", "&&&", "^&^&", "~^~", "^^^^^^^^^^^^^^^^^^^^^^^^^"])))
        elif op == "obx":
            obx = [k for k, ln in enumerate(lines) if ln.startswith("OBX")]
            if obx:
                k = draw(st.sampled_from(obx))
                lines[k] = _set_field(_set_field(lines[k], 2, draw(st.sampled_from(OBX_TYPES))),
                                      5, draw(st.sampled_from(OBX_VALUES)))
        elif op == "date" and line[:3] in DATE_FIELDS:
            n = draw(st.sampled_from(DATE_FIELDS[line[:3]]))
            lines[i] = _set_field(line, n, draw(st.sampled_from(DATES)))
        elif op == "version" and lines:
            lines[0] = _set_field(lines[0], 12, draw(st.sampled_from(VERSIONS)))
        elif op == "zsegment":
            lines.insert(draw(st.integers(1, max(1, len(lines)))), draw(st.sampled_from(ZSEGS)))
        elif op == "ending":
            ending = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\r", "\r\r"]))
    text = ending.join(lines) + draw(st.sampled_from(["", ending, "\x1c\r"]))
    data = text.encode(encoding, "replace")
    if draw(st.booleans()) and encoding == "utf-8":
        data = b"\xef\xbb\xbf" + data          # a BOM, as 28 FHIR-Converter samples have
    return data


def _answer(original, code: str, err: HL7ParseError | None = None) -> None:
    """The ACK the hub sends for this outcome is itself a message the parser reads, with an ERR
    naming the error when there is one (hub/ingest/normalize.py builds it the same way)."""
    ack = parse_message(build_ack(original, code, err))
    assert ack.message_type == "ACK" and ack.segment("MSA").get(1) == code
    if err is not None:
        assert ack.segment("ERR") is not None


def _check(data: bytes, record=lambda outcome: None, profile: FacilityProfile | None = None) -> None:
    """Parse (with the profile's charset hint, as the hub's ingest does) and convert one message."""
    charset = profile.charset if profile is not None else None
    try:
        msg = parse_message(data, charset)
    except HL7ParseError as err:
        assert err.code in TABLE_0357, repr(err)
        record(f"parser refused ({err.code})")
        _answer(err.header or read_header(data, charset), "AR", err)
        return
    try:
        result = convert(msg, "HOSPA", profile)
    except MappingError as err:
        assert err.code in TABLE_0357 and err.text, repr(err)
        record(f"mapping refused ({err.code})")
        _answer(msg, "AE", HL7ParseError(err.code, err.text, err.segment, err.field))
        return
    record("converted")
    for res in result.resources():
        validate(res)
    _answer(msg, "AA")


@settings(max_examples=700, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example, HealthCheck.filter_too_much])
@given(damaged(), st.sampled_from([None, None, QUIRKY]))
def test_damaged_corpus_messages_parse_and_map_or_fail_with_a_documented_error(data, profile):
    _check(data, hypothesis.event, profile)


#: what longer runs of the property test found (kept as fixed examples after the fix)
FOUND = [
    # EVN-2 of year 0000: the source-event-time instant was "0000-01-01T…", which FHIR refuses
    "MSH|^~\\&|HIS|HOSPA|HUB|ALL|20190423150137+0215||ADT^A01|C1|P|2.5\rEVN|A01|0000\r"
    "PID|1||M1^^^HOSPA^MR||WANG^FANG\r",
    "MSH|^~\\&|HIS|HOSPA|HUB|ALL|0000||ADT^A01|C1|P|2.5\rPID|1||M1^^^HOSPA^MR||WANG^FANG\r",
    # PID-25 (birth order) of 70,000 digits: int() refused it (Python's 4,300-digit limit)
    "MSH|^~\\&|HIS|HOSPA|HUB|ALL|20240101||ADT^A01|C1|P|2.5\r"
    "PID|1||M1^^^HOSPA^MR||WANG^FANG" + "|" * 19 + "Y|" + "9" * 70_000 + "\r",
    # a letter among the encoding characters: the ACK echoing them could not be read back
    "MSH\\C|^~\\&||A|||20240101||ADT^A01|C1|P|2.5\rPID|1||M1^^^HOSPA^MR\r",
    # an unreadable trigger echoed into the ACK's MSH-9 made the ACK unreadable: a header cut
    # short (MSH-2 "SOLV" shifts every field) and an escaped component separator in MSH-9.2
    "MSH|SOLV|XYZ|SYS|XYZ|200801311600+0215||MDM^T02^MDM_T02|PS1-20080131160038|P|2.8\r",
    "MSH|^~\\&|LAB|FAC|HUB|ALL|20240101||ORU^\\S\\R01^ORU_R01|C1|P|2.5.1\rPID|1||M1^^^HOSPA^MR\r",
]


@pytest.mark.parametrize("text", FOUND)
def test_what_the_property_test_found(text):
    _check(text.encode())


def test_the_seeds_cover_every_mapped_family():
    """The mutants start from converted messages of every mapped family (a test that fuzzes only
    ORU would say nothing about SIU)."""
    families = {parse_message(raw).message_type for raw in SEEDS}
    assert {"ADT", "ORU", "ORM", "OML", "MDM", "SIU", "VXU"} <= families
