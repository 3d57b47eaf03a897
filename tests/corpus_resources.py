"""FHIR resources from the shared corpus, for tests that check a mechanism against many real
shapes: Synthea bundles (``../shared/corpus/fhir/synthea``) and the HL7 mapping's outputs of the
indexed ``../shared/corpus/hl7v2`` messages."""

from __future__ import annotations

import bz2
import csv

import orjson
import pytest

from tests.conftest import SHARED

SYNTHEA = SHARED / "corpus" / "fhir" / "synthea"
HL7 = SHARED / "corpus" / "hl7v2"

needs_corpus = pytest.mark.skipif(not (SYNTHEA.is_dir() and (HL7 / "index.tsv").is_file()),
                                  reason="shared corpus not found")


def synthea_resources(files: int) -> list[dict]:
    """The resources of the first ``files`` Synthea bundles in name order (the hospital and
    practitioner lists come first, then patients)."""
    out = []
    for f in sorted(SYNTHEA.glob("*.json.bz2"))[:files]:
        out += [e["resource"] for e in orjson.loads(bz2.decompress(f.read_bytes()))["entry"]]
    return out


def hl7_resources() -> list[dict]:
    """Every resource the mapping makes of the indexed HL7 v2 messages it accepts."""
    from adapters.hl7v2 import HL7ParseError, parse_message
    from mappings import MappingError, UnsupportedMessage, convert

    out = []
    with open(HL7 / "index.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for row in rows:
        try:
            result = convert(parse_message((HL7 / row["path"]).read_bytes()), "HOSPA")
        except (HL7ParseError, MappingError, UnsupportedMessage):
            continue
        out += [e["resource"] for e in result.bundle.get("entry") or [] if e.get("resource")]
    return out
