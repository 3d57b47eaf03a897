"""Shared helpers for the adapter tests."""

from __future__ import annotations

from pathlib import Path

import pytest

#: the read-only reference corpus, next to the repository (../shared/corpus)
CORPUS_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hl7v2"


def er7(*segments: str, sep: str = "\r") -> bytes:
    """Join segments with a terminator and encode as UTF-8."""
    return (sep.join(segments) + sep).encode("utf-8")


MSH_ORU = "MSH|^~\\&|LIS|LAB^1.2.3^ISO|HUB|ALLIANCE|20240311140000+0800||ORU^R01^ORU_R01|LIS0007|P|2.5.1"


@pytest.fixture
def oru_bytes() -> bytes:
    return er7(
        MSH_ORU + "|||AL|NE||UNICODE UTF-8",
        "PID|1||MRN77^^^HOSPA^MR~330102198001011234^^^CN&2.16.156.10011.1.3&ISO^NNCHN||吴^磊||19880808|M",
        "PV1|1|O|LAB^^^HOSPA",
        "ORC|RE|ORD1^HIS|FIL1^LIS||CM",
        "OBR|1|ORD1^HIS|FIL1^LIS|58410-2^CBC panel^LN",
        "OBX|1|NM|718-7^Hemoglobin^LN||9.8|g/dL|13.5-17.5|L|||F",
        "NTE|1|L|hemolysed",
        "OBX|2|NM|6690-2^WBC^LN||15.2|10*9/L|4.0-10.0|H|||F",
        "ORC|RE|ORD2^HIS|FIL2^LIS||CM",
        "OBR|2|ORD2^HIS|FIL2^LIS|2345-7^Glucose^LN",
        "OBX|1|NM|2345-7^Glucose^LN||5.1|mmol/L|3.9-6.1|N|||F",
        "SPM|1|SP2||BLD",
        "ZLS|custom^value|\\T\\amp",
    )
