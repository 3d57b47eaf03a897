"""Micro-benchmark of HL7 v2 -> FHIR mapping: ORU^R01 with 10 OBX through parse + convert.

Run: ``python bench/hl7v2_mapping.py``. Uses the ORU^R01 of ``bench/hl7v2_parse.py`` (one
patient, one visit, one order, 10 numeric results: 14 resources in the bundle). Prints CPU time
per message (process_time: other load on the machine does not count), best and median of several
rounds, and the messages per second that makes, for parse alone, convert alone and both.

The mapper memoizes what repeats across messages (codes, units, ranges, timestamps), so
converting one message again and again is its best case; the last line converts distinct
messages (own patient, order, values and timestamps each: only codes, units and ranges repeat),
which is what a feed looks like. The target is well under 0.5 ms per message for parse + convert
(the hub's ingest target is 1,000 messages/s end to end).

The last two lines take the messages of ``bench/hl7v2_ingest.py`` (a patient of their own with a
Chinese name and address, 10 results, 15 resources each) and time, per message, ``convert`` and
the hub's validation of its 15 resources (``hub.fhir.validation.validate_resource``, which the
ingest runs on every entry): best of 3 passes over 2,000 messages, each result dropped before
the next, as the ingest does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hl7v2_parse import ORU_R01, measure  # noqa: E402  (the same message as the parser benchmark)

from adapters.hl7v2 import parse_message  # noqa: E402
from mappings import convert  # noqa: E402


def distinct_oru_r01(n: int) -> bytes:
    """Message ``n``: its own patient, order, result values and timestamps."""
    minute, second = divmod(n % 3600, 60)
    stamp = f"202403{1 + n % 28:02d}{n % 24:02d}{minute:02d}{second:02d}+0800"
    text = ORU_R01.decode("utf-8").replace("LIS0007", f"LIS{n:08d}").replace("MRN77", f"MRN{n}")
    text = text.replace("ORD77", f"ORD{n}").replace("FIL77", f"FIL{n}")
    text = text.replace("20240311110000+0800", stamp).replace("20240311100000+0800", stamp)
    return text.replace("|9.8|", f"|{n % 200 / 10:.1f}|").encode("utf-8")


def main() -> None:
    msg = parse_message(ORU_R01)
    result = convert(msg, "HOSPA")            # warm: specs compiled, terminology loaded
    cases = {
        "parse_message": lambda: parse_message(ORU_R01),
        "convert (parsed message)": lambda: convert(msg, "HOSPA"),
        "parse_message + convert": lambda: convert(parse_message(ORU_R01), "HOSPA"),
    }
    segments = ORU_R01.count(b"\r")
    print(f"ORU^R01, {segments} segments, {len(ORU_R01)} bytes -> "
          f"{len(result.bundle['entry'])} resources")
    for label, fn in cases.items():
        best, median = measure(fn, number=1000, rounds=5)
        print(f"{label:26s} best {best:7.1f} us   median {median:7.1f} us   "
              f"= {1e6 / median:7.0f} messages/s (median)")
    feed = [distinct_oru_r01(n) for n in range(20_000)]
    start = time.process_time()
    for raw in feed:
        convert(parse_message(raw), "HOSPA")
    per = (time.process_time() - start) / len(feed) * 1e6
    print(f"{'20,000 distinct messages':26s} mean {per:7.1f} us                  = {1e6 / per:7.0f} messages/s")
    ingest_feed()


def ingest_feed(count: int = 2000, passes: int = 3) -> None:
    from hl7v2_ingest import oru_r01

    from hub.fhir.validation import validate_resource

    raws = [oru_r01(n, "m") for n in range(count + 200)]
    for raw in raws[count:]:                  # warm: shapes cached, codes memoized
        for e in convert(parse_message(raw), "HOSPA").bundle["entry"]:
            validate_resource(e["resource"], e["resource"]["resourceType"])
    messages = [parse_message(raw) for raw in raws[:count]]
    best_convert = best_validate = float("inf")
    for _ in range(passes):
        converting = validating = 0.0
        for msg in messages:
            t0 = time.process_time()
            entries = convert(msg, "HOSPA").bundle["entry"]
            t1 = time.process_time()
            for e in entries:
                validate_resource(e["resource"], e["resource"]["resourceType"])
            validating += time.process_time() - t1
            converting += t1 - t0
        best_convert, best_validate = min(best_convert, converting), min(best_validate, validating)
    for label, total in (("ingest feed: convert", best_convert), ("ingest feed: validate x15", best_validate)):
        per = total / count * 1e6
        print(f"{label:26s} best  {per:7.1f} us                  = {1e6 / per:7.0f} messages/s")


if __name__ == "__main__":
    main()
