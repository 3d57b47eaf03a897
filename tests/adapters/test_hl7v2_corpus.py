"""Walk every message of the shared HL7 v2 corpus (../shared/corpus/hl7v2, read-only).

Each indexed file either parses -- and then its header and segment list agree with
``index.tsv`` and with MSH-10 read naively from the bytes -- or raises HL7ParseError with the
code pinned below. Any other exception fails. Multi-message files are indexed through their
``_split/`` pieces (column ``split_from``), so every ``path`` is one message file.
"""

from __future__ import annotations

import collections
import csv
import re

import pytest

from adapters.hl7v2 import HL7ParseError, build_ack, parse_message

from .conftest import CORPUS_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CORPUS_DIR / "index.tsv").is_file(),
                       reason=f"HL7 v2 corpus not found at {CORPUS_DIR} (expected ../shared/corpus next to the repo)"),
]

#: files the parser rejects, with the table 0357 code and why
EXPECTED_REJECTIONS = {
    # hl7apy parser tests: MSH-only messages with invalid encoding characters / missing MSH-9
    "hl7apy/extracted-from-tests/test_parser__m__L0184.hl7": 101,        # MSH-2 empty
    "hl7apy/extracted-from-tests/test_parser__m__L0187.hl7": 102,        # '^~\' (3 chars)
    "hl7apy/extracted-from-tests/test_parser__m__L0192.hl7": 102,        # '@%\'
    "hl7apy/extracted-from-tests/test_parser__m__L0195.hl7": 102,        # '^~\'
    "hl7apy/extracted-from-tests/test_parser__m__L0200.hl7": 102,        # 7 characters
    "hl7apy/extracted-from-tests/test_parser__m__L0203.hl7": 102,        # 6 characters
    "hl7apy/extracted-from-tests/test_parser__m__L0211.hl7": 101,        # MSH-9 empty
    "hl7apy/extracted-from-tests/test_parser__m__L0215.hl7": 102,        # '^&&^' not distinct
    "hl7apy/extracted-from-tests/test_parser__m__L0218.hl7": 102,        # '^&&^##'
    "hl7apy/extracted-from-tests/test_parser__msh__L0223.hl7": 101,      # MSH-9 empty
    "hl7apy/extracted-from-tests/test_parser__msh__L0229.hl7": 101,      # MSH-9 empty
    # unfilled templates: MSH-9 is '{}'
    "hl7apy/extracted-from-tests/test_mllp__PDQ_REQ_TPL__L0036.hl7": 200,
    "hl7apy/extracted-from-tests/test_mllp__PDQ_RES_TPL__L0045.hl7": 200,
    "hl7apy/extracted-from-tests/test_parser__msh__L0448.hl7": 200,
    # MSH-2 '$r?@': MSH-9 'RSP^SLI^RSP_K11' holds no component separator, so is not a 3-char code
    "hl7apy/extracted-from-tests/test_to_string__msh_custom__L0049.hl7": 200,
    # a segment line broken in two: '999|||00^New immunization record...'
    "pipehat/samples/sample-v2.5.1-rsp-k11-1.hl7": 100,
    # python-hl7's deliberately bad batches and files
    "python-hl7/extracted-from-tests/samples__sample_bad_batch1__L0115.hl7": 100,   # BHS inside a batch
    "python-hl7/extracted-from-tests/samples__sample_bad_batch__L0102.hl7": 100,    # no MSH
    "python-hl7/extracted-from-tests/samples__sample_bad_file1__L0272.hl7": 100,    # BHS inside a batch
    "python-hl7/extracted-from-tests/samples__sample_bad_file2__L0289.hl7": 100,    # second FHS
    "python-hl7/extracted-from-tests/samples__sample_bad_file3__L0306.hl7": 100,    # no MSH
    "python-hl7/extracted-from-tests/samples__sample_bad_file__L0257.hl7": 100,     # no MSH
}

_ENVELOPE = {"FHS", "BHS", "BTS", "FTS"}


def _rows() -> list[dict[str, str]]:
    with open(CORPUS_DIR / "index.tsv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _expand(segments_column: str) -> list[str]:
    """'MSH PID OBXx3' -> ['MSH', 'PID', 'OBX', 'OBX', 'OBX'] without envelope segments."""
    names: list[str] = []
    for token in segments_column.split():
        m = re.fullmatch(r"(.+?)x(\d+)", token)
        name, count = (m.group(1), int(m.group(2))) if m else (token, 1)
        if name not in _ENVELOPE:
            names.extend([name] * count)
    return names


def _naive_msh(raw: bytes) -> list[str]:
    """MSH fields by plain splitting (numbered as in HL7: [n] is MSH-n), an independent reading."""
    text = raw.decode("gb18030" if b"GB 18030" in raw[:400] else "utf-8", errors="replace")
    start = text.find("MSH")
    line = re.split(r"\r\n|\r|\n", text[start:])[0]
    sep = line[3]
    return ["MSH", sep] + line[4:].split(sep)


def _ack_round_trip(path, header, code, error) -> list[str]:
    """The ACK for every corpus message (or for what was read of it) parses back."""
    try:
        ack = parse_message(build_ack(header, code, error))
    except Exception as exc:  # noqa: BLE001
        return [f"{path}: ACK does not parse back: {type(exc).__name__}: {exc}"]
    if ack.get("MSA-1") != code or ack.get("MSA-2") != header.control_id:
        return [f"{path}: ACK MSA {ack.get('MSA-1')!r}/{ack.get('MSA-2')!r} for {header.control_id!r}"]
    if error is not None and ack.segment("ERR") is None:
        return [f"{path}: ACK without ERR"]
    return []


def test_every_corpus_message_parses_or_is_rejected_with_its_code(capsys):
    rows = _rows()
    assert len(rows) == 567
    counts: collections.Counter = collections.Counter()
    problems: list[str] = []
    for row in rows:
        path = row["path"]
        raw = (CORPUS_DIR / path).read_bytes()
        try:
            msg = parse_message(raw)
        except HL7ParseError as err:
            counts[f"rejected {err.code}"] += 1
            if EXPECTED_REJECTIONS.get(path) != err.code:
                problems.append(f"{path}: unexpected HL7ParseError {err!s}")
            problems.extend(_ack_round_trip(path, err.header, "AR", err))
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            counts["crashed"] += 1
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        counts["parsed"] += 1
        if path in EXPECTED_REJECTIONS:
            problems.append(f"{path}: parsed, expected HL7ParseError {EXPECTED_REJECTIONS[path]}")
        naive = _naive_msh(raw)
        d = msg.delimiters
        checks = {
            "type^trigger": (f"{msg.message_type}^{msg.trigger or ''}", row["msg_type^trigger(MSH-9.1^9.2)"].strip()),
            "control id": (msg.control_id, naive[10].split(d.component)[0].strip()),
            "version": (msg.version or "", row["hl7_version(MSH-12)"]),
            "MSH-9.3": (msg.msh.get(9, comp=3) or "", row["msg_structure(MSH-9.3)"]),
            "MSH-3": (msg.msh.field(3).raw, row["sending_app(MSH-3)"]),
            "MSH-4": (msg.msh.field(4).raw, row["sending_facility(MSH-4)"]),
            "MSH-18": (msg.msh.field(18).raw, row["charset(MSH-18)"]),
            "segments": ([s.name for s in msg.segments], _expand(row["segments"])),
        }
        for what, (got, expected) in checks.items():
            if got != expected:
                problems.append(f"{path}: {what} {got!r} != index {expected!r}")
        problems.extend(_ack_round_trip(path, msg.header, "AA", None))
    with capsys.disabled():
        print(f"\nHL7 v2 corpus walk: {dict(sorted(counts.items()))}")
    assert not problems, "\n".join(problems[:50])
    assert counts["parsed"] + sum(v for k, v in counts.items() if k.startswith("rejected")) == len(rows)
