"""Micro-benchmark of parse_message on a typical ORU^R01 with 10 OBX (1.4 kB, UTF-8 Chinese).

Run: ``python bench/hl7v2_parse.py``. Times are CPU time per message (process_time,
so other load on the machine does not count), best and median of several rounds, next to the
cost of the bare minimum (decode + split every segment on ``|``) for scale.
"""

from __future__ import annotations

import statistics
import time
import timeit

from adapters.hl7v2 import parse_message

_OBX = "".join(
    f"OBX|{i}|NM|718-{i}^Hemoglobin {i}^LN||{9.8 + i:.1f}|g/dL^gram per deciliter^UCUM|13.5-17.5|L|||F|||"
    f"20240311110000+0800\r" for i in range(1, 11))

ORU_R01 = (
    "MSH|^~\\&|LIS|LAB^1.2.3^ISO|HUB|ALLIANCE|20240311140000+0800||ORU^R01^ORU_R01|LIS0007|P|2.5.1|||AL|NE||"
    "UNICODE UTF-8\r"
    "PID|1||MRN77^^^HOSPA^MR~330102198001011234^^^CN^NNCHN||吴^磊||19880808|M|||浙江省杭州市^^杭州市^浙江省^310000^CHN\r"
    "PV1|1|O|LAB^^^HOSPA\r"
    "ORC|RE|ORD77^HIS|FIL77^LIS||CM\r"
    "OBR|1|ORD77^HIS|FIL77^LIS|58410-2^CBC panel^LN|||20240311100000+0800|||||||||||||||20240311135900+0800||HM|F\r"
    + _OBX).encode("utf-8")

ORU_R01_GB18030 = ORU_R01.replace(b"UNICODE UTF-8", b"GB 18030-2000").decode("utf-8").encode("gb18030")


def _read_values(raw: bytes) -> list:
    msg = parse_message(raw)
    out: list = [msg.get("PID-3(2)-1"), msg.get("PID-5-1")]
    for group in msg.groups("OBR", members={"OBX", "NTE"}):
        for obx in group.segments_named("OBX"):
            out.append((obx.get(3), obx.get(5), obx.get(6), obx.get(14)))
    return out


def measure(fn, number: int = 2000, rounds: int = 7) -> tuple[float, float]:
    """(best, median) CPU microseconds per call."""
    times = [timeit.timeit(fn, number=number, timer=time.process_time) / number * 1e6 for _ in range(rounds)]
    return min(times), statistics.median(times)


def main() -> None:
    cases = {
        "decode + split only (floor)": lambda: [s.split("|") for s in ORU_R01.decode("utf-8").split("\r")],
        "parse_message UTF-8": lambda: parse_message(ORU_R01),
        "parse_message MLLP framed": lambda: parse_message(b"\x0b" + ORU_R01 + b"\x1c\r"),
        "parse_message GB18030": lambda: parse_message(ORU_R01_GB18030),
        "parse + read 42 leaf values": lambda: _read_values(ORU_R01),
    }
    segments = ORU_R01.count(b"\r")
    print(f"ORU^R01, {segments} segments, {len(ORU_R01)} bytes")
    for label, fn in cases.items():
        best, median = measure(fn)
        print(f"{label:32s} best {best:7.1f} us   median {median:7.1f} us")


if __name__ == "__main__":
    main()
