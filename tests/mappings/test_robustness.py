"""Damaged messages: corpus messages with one field replaced by a hostile value either convert to
valid resources or raise MappingError; nothing else escapes (the hub must stay up)."""

from __future__ import annotations

import collections
import csv
import random

import pytest

from adapters.hl7v2 import HL7ParseError, parse_message
from mappings import MappingError, convert

from .conftest import CORPUS_DIR, HARDCASES, needs_corpus, validate

pytestmark = [pytest.mark.slow, needs_corpus]

HOSTILE = ['""', "^^^^", "&&&", "~~~", "X" * 70, "20241399", "2024", "-1", "1e999", "<", "^1^:", "^" * 17,
           "\\X41\\", "中文", "0", "NaN", "9" * 30, " ", "\\E\\", "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^~"]
TYPES = ("ADT^A01", "ADT^A40", "ORU^R01", "ORM^O01", "OML^O21", "MDM^T02", "SIU^S12", "VXU^V04")


def _sources() -> list:
    with open(CORPUS_DIR / "index.tsv", encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["msg_type^trigger(MSH-9.1^9.2)"].strip() in TYPES]
    return sorted(HARDCASES.glob("*.hl7")) + [CORPUS_DIR / r["path"] for r in rows[::4]]


def _convert_and_validate(make_message, where: str, refusals, refused: str, outcomes, problems) -> None:
    """Convert one damaged message: a refusal (``refusals``) is counted as ``refused``; any other
    exception, or a resource that does not validate, is a problem."""
    try:
        result = convert(make_message(), "HOSPA")
    except refusals:
        outcomes[refused] += 1
        return
    except Exception as exc:  # noqa: BLE001 - the point of the test
        problems.append(f"{where}: {type(exc).__name__}: {exc}")
        return
    outcomes["converted"] += 1
    for res in result.resources():
        try:
            validate(res)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{where}: invalid {res['resourceType']}: {exc}")


def test_one_damaged_field_never_crashes_the_mapping():
    rng = random.Random(20240301)          # fixed: the same mutants on every run
    outcomes: collections.Counter = collections.Counter()
    problems: list[str] = []
    for path in _sources():
        try:
            base = parse_message(path.read_bytes())
        except HL7ParseError:
            continue
        lines = [line for line in base.text.split("\r") if line]
        sep = base.delimiters.field
        if len(lines) < 2:
            continue
        for _ in range(12):
            damaged = list(lines)
            i = rng.randrange(1, len(damaged))
            fields = damaged[i].split(sep)
            j = rng.randrange(1, len(fields) + 3)
            fields += [""] * (j + 1 - len(fields))
            value = rng.choice(HOSTILE)
            fields[j] = value
            damaged[i] = sep.join(fields)
            try:
                msg = parse_message("\r".join(damaged))
            except HL7ParseError:
                outcomes["parser rejected"] += 1
                continue
            where = f"{path.name}: {fields[0]}-{j} = {value!r}"
            _convert_and_validate(lambda: msg, where, MappingError, "mapping error", outcomes, problems)
    print(f"\ndamaged messages: {dict(outcomes)}")
    assert outcomes["converted"] > 300
    assert not problems, "\n".join(problems[:20])


def test_dropped_repeated_or_swapped_segments_never_crash_the_mapping():
    rng = random.Random(11)
    outcomes: collections.Counter = collections.Counter()
    problems: list[str] = []
    for path in _sources():
        try:
            base = parse_message(path.read_bytes())
        except HL7ParseError:
            continue
        lines = [line for line in base.text.split("\r") if line]
        if len(lines) < 3:
            continue
        for _ in range(8):
            damaged = list(lines)
            op, i = rng.choice(("drop", "repeat", "swap")), rng.randrange(1, len(damaged))
            if op == "drop":
                del damaged[i]
            elif op == "repeat":
                damaged.insert(i, damaged[i])
            else:
                j = rng.randrange(1, len(damaged))
                damaged[i], damaged[j] = damaged[j], damaged[i]
            _convert_and_validate(lambda: parse_message("\r".join(damaged)), f"{path.name} ({op} {i})",
                                  (HL7ParseError, MappingError), "refused", outcomes, problems)
    print(f"\nrestructured messages: {dict(outcomes)}")
    assert outcomes["converted"] > 200
    assert not problems, "\n".join(problems[:20])
