"""Every message of the shared HL7 v2 corpus through parse + convert.

Each indexed message (index.tsv, 567; found as in tests/adapters/test_hl7v2_corpus.py) either
converts to a bundle whose every resource validates, or raises MappingError /
UnsupportedMessage with a table 0357 code and the segment at fault. Messages the parser rejects
are the adapter's concern (pinned there) and only counted here. Any other exception fails.
"""

from __future__ import annotations

import collections
import csv

import pytest

from adapters.hl7v2 import HL7ParseError, parse_message
from mappings import MappingError, UnsupportedMessage, convert

from .conftest import CORPUS_DIR, needs_corpus, validate

pytestmark = [pytest.mark.slow, needs_corpus]

#: what the walk reaches today (raise it when mappings improve; a drop is a regression)
MIN_CONVERTED = 232
TABLE_0357 = {100, 101, 102, 103, 200, 201, 207}


def _rows() -> list[dict[str, str]]:
    with open(CORPUS_DIR / "index.tsv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_every_corpus_message_converts_and_validates_or_is_rejected_with_a_reason(capsys):
    rows = _rows()
    assert len(rows) == 567
    counts: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    problems: list[str] = []
    for row in rows:
        path = row["path"]
        try:
            msg = parse_message((CORPUS_DIR / path).read_bytes())
        except HL7ParseError:
            counts["parser rejected (adapters)"] += 1
            continue
        try:
            result = convert(msg, "HOSPA")
        except UnsupportedMessage as err:
            counts["unsupported"] += 1
            assert err.code == 200 and err.segment == "MSH" and err.field == 9, path
            continue
        except MappingError as err:
            counts[f"rejected {err.code}"] += 1
            reasons[f"{err.code} {err.segment}-{err.field or ''}: {err.text}"] += 1
            if err.code not in TABLE_0357 or not err.segment or not err.text:
                problems.append(f"{path}: unspecific MappingError {err!r}")
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            counts["crashed"] += 1
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        counts["converted"] += 1
        assert result.bundle["entry"], path
        for entry in result.bundle["entry"]:
            try:
                validate(entry["resource"])
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{path}: {entry['request']['url']} invalid: {exc}")
    with capsys.disabled():
        print(f"\nHL7 v2 -> FHIR corpus walk: {dict(sorted(counts.items()))}")
        for reason, n in reasons.most_common():
            print(f"  {n:4d} x {reason}")
    assert not problems, "\n".join(problems[:50])
    assert counts["converted"] >= MIN_CONVERTED
    assert sum(counts.values()) == len(rows)
