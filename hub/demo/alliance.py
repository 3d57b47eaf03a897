"""A small alliance for the demonstration: two member hospitals send HL7 v2 feeds, the same
person is registered at both, and a lab result of one is recognizable at the other.

Everything goes through the hub's real paths: recognition reference data is published like a
region's files (``hub.recognition``), and the messages go through the ingest pipeline
(``hub.ingest``: raw log, parse, map, one transaction each, master patient index, HR marks).
All people and numbers are invented; the resident ID numbers have valid GB 11643 check
characters but belong to nobody.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "recognition" / "samples"

CST = timezone(timedelta(hours=8))
RESIDENT_ID = "420106198001011237"  # invented; its GB 11643 check character is right

#: H001's and H002's LIS send local codes with coding system "L": the hub files them under
#: …/CodeSystem/local/{org}/lab, which a blank ``local_system`` in a code file stands for
_HL7_CODE_ROWS = ("H001,,GLU,葡萄糖,14749-6,CAT-GLU,mmol/L\n"
                  "H001,,HGB,血红蛋白,718-7,CAT-HGB,g/L\n"
                  "H002,,B-GLU-01,血糖,,CAT-GLU,mmol/L\n")


def _hl7_time(days_ago: float = 0) -> str:
    return (datetime.now(CST) - timedelta(days=days_ago)).strftime("%Y%m%d%H%M%S+0800")


def _message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("gb18030")


def _adt(org: str, mrn: str, resident_id: str, name: str, phone: str, control_id: str) -> bytes:
    return _message(
        f"MSH|^~\\&|HIS|{org}|YILIAN|HUB|{_hl7_time(5)}||ADT^A04^ADT_A01|{control_id}|P|2.5|||||CHN|GB 18030-2000",
        f"EVN|A04|{_hl7_time(5)}",
        f"PID|1||{mrn}^^^{org}^MR~{resident_id}^^^CN&2.16.156.10011.1.3&ISO^NNCHN||{name}||19800101|M|||"
        f"解放路1号^^武汉市^湖北省^430000^CHN^H||^PRN^CP^^86^^{phone}",
        "PV1|1|O|门诊^^^" + org)


def _oru(org: str, mrn: str, code: str, display: str, value: str, unit: str, low_high: str, days_ago: float,
         control_id: str) -> bytes:
    when, filler = _hl7_time(days_ago), uuid.uuid4().hex[:10]
    return _message(
        f"MSH|^~\\&|LIS|{org}|YILIAN|HUB|{when}||ORU^R01^ORU_R01|{control_id}|P|2.5.1|||||CHN|GB 18030-2000",
        f"PID|1||{mrn}^^^{org}^MR||张^三丰||19800101|M",
        f"OBR|1|P{filler}|{filler}^LIS|{code}^{display}^L|||{when}|||||||||||||||{when}||CH|F",
        f"OBX|1|NM|{code}^{display}^L||{value}|{unit}^{unit}^UCUM|{low_high}|N|||F|||{when}")


def _qualifications(today: date) -> bytes:
    """The sample qualifications, valid from a year ago to a year ahead of ``today``."""
    lines = (SAMPLES / "qualifications.csv").read_text(encoding="utf-8").splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        cols = line.split(",")
        out.append(",".join(cols[:6] + [(today - timedelta(days=365)).isoformat(),
                                        (today + timedelta(days=365)).isoformat()]))
    return ("\n".join(out) + "\n").encode("utf-8")


def load_alliance(hub) -> dict:
    """Publish the recognition reference data and ingest the two hospitals' feeds; returns the
    ids a newcomer needs (the person's Patient at H002, the glucose result of H001)."""
    from hub.ingest import log as rawlog
    from hub.ingest.log import Incoming
    from hub.storage.db import read_tx
    from hub.security.access import Access
    from hub.security.scopes import parse_scopes
    from hub.security.tokens import Principal

    for kind, body in (("scopes", (SAMPLES / "scopes.csv").read_bytes()),
                       ("catalogue", (SAMPLES / "catalogue.csv").read_bytes()),
                       ("codemaps", (SAMPLES / "codemaps.csv").read_bytes() + _HL7_CODE_ROWS.encode()),
                       ("qualifications", _qualifications(date.today()))):
        hub.recognition.publish(kind, body, fmt="csv", effective_from="2000-01-01", source=f"demo {kind}.csv",
                                loaded_by="yilian demo", retag="wait")
    feeds = {
        "H001": [_adt("H001", "MRN0098765", RESIDENT_ID, "张^三丰", "13800138000", "DEMO-H001-1"),
                 _oru("H001", "MRN0098765", "GLU", "葡萄糖", "5.8", "mmol/L", "3.9-6.1", 3, "DEMO-H001-2"),
                 _oru("H001", "MRN0098765", "HGB", "血红蛋白", "138", "g/L", "130-175", 3, "DEMO-H001-3")],
        "H002": [_adt("H002", "B000123", RESIDENT_ID, "张^三丰", "13800138000", "DEMO-H002-1")],
    }
    results: dict[str, list[dict]] = {}
    for org, messages in feeds.items():
        access = Access(Principal(subject=f"fep-{org.lower()}", client_id=f"fep-{org.lower()}",
                                  scopes=parse_scopes(""), scope_text="yilian/ingest", organization=org))
        items = [Incoming(item_id=f"demo-{org}-{i}", kind="hl7v2", payload=m, feed="demo")
                 for i, m in enumerate(messages)]
        results[org] = hub.ingest.receive(access, org, items, wait=True)
        bad = [r for r in results[org] if r["status"] != "normalized"]
        if bad:
            raise SystemExit(f"demonstration feed of {org} was not normalized: {bad[0]['error']}")
    with read_tx(hub.engine) as conn:
        view = rawlog.message_view(rawlog.read_message(conn, int(results["H002"][0]["message_id"])),
                                   with_payload=False)
    return {"patient_h002": next(r for r in view["resources"] if r.startswith("Patient/"))}
