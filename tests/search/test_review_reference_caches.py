"""The reference texts that index extraction remembers between resources (target types by text,
a plain Reference's row by text) are bounded in size as well as in number: long texts, which a
request chooses, are not kept after the resource is indexed, and index the same as short ones."""

from __future__ import annotations

import gc
import tracemalloc

from hub.fhir.search.extract import extract_index


def _observation(ref: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": ref}, "performer": [{"reference": ref, "display": "d"}]}


def test_long_reference_texts_are_not_kept_after_extraction():
    extract_index(_observation("Patient/warm-up"))  # plans and registry built outside the measure
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            # 40 kB each, distinct; built here so that only the caches can keep them
            rows = extract_index(_observation("http://other.example/" + "x" * 40_000 + f"/Patient/p{i}"))
            assert rows.reference
            del rows
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, kept  # 4 MB of texts were kept before


def test_a_long_reference_indexes_as_a_short_one():
    for ref in ("Patient/abc", "http://other.example/fhir/Patient/abc", "http://other.example/" + "y" * 2_000 + "/Patient/abc"):
        first = extract_index(_observation(ref)).reference
        again = extract_index(_observation(ref)).reference
        assert first == again and {r[1] for r in first} == {"Patient"}, (ref[:40], first)
