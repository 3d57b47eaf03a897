"""IG field maps the expected-bundle comparison brought up: order-number precedence, VXU order
numbers, SIU timing and resources, planned encounters, the SPECIMEN group's OBX."""

from __future__ import annotations

from adapters.hl7v2 import parse_message
from mappings import convert, identity

from .conftest import only, validate

MSH = "MSH|^~\\&|HIS|HOSPA|HUB|ALLIANCE|20240320090000+0800||{type}|CTRL1|P|2.8"
PID = "PID|1||MRN5^^^HOSPA^MR||李^小龙||19700101|M"


def convert_segments(type_: str, *segments: str):
    result = convert(parse_message("\r".join([MSH.format(type=type_), *segments]) + "\r"), "HOSPA")
    for res in result.resources():
        validate(res)
    return result


def _values(res: dict) -> dict[str, str]:
    return {i.get("type", {}).get("coding", [{}])[0].get("code", i["system"].rsplit("/", 1)[-1]): i["value"]
            for i in res.get("identifier", [])}


def test_orc_order_numbers_win_over_obr_and_the_alternate_placer_number_is_kept():
    r = convert_segments("ORM^O01^ORM_O01", PID,
                         "ORC|NW|ORC-P1^HIS|ORC-F1^LIS|GRP-1|||||20240320085000+0800" + "|" * 24 + "ALT-33",
                         "OBR|1|OBR-P1^HIS|OBR-F1^LIS|24331-1^Lipid panel^LN")
    sr = only(r, "ServiceRequest")
    assert _values(sr) == {"PLAC": "ORC-P1", "FILL": "ORC-F1", "placer-alternate": "ALT-33"}
    assert sr["requisition"]["value"] == "GRP-1"
    assert sr["id"] == identity.resource_id("ServiceRequest", identity.org_system("HOSPA", "placer"), "ORC-P1")
    # without ORC numbers, OBR's
    r = convert_segments("ORM^O01^ORM_O01", PID, "ORC|NW", "OBR|1|OBR-P1^HIS|OBR-F1^LIS|24331-1^Lipid panel^LN")
    assert {k: v for k, v in _values(only(r, "ServiceRequest")).items()} == {"PLAC": "OBR-P1", "FILL": "OBR-F1"}


def test_vxu_orc_placer_and_filler_numbers_identify_the_immunization():
    r = convert_segments("VXU^V04^VXU_V04", PID, "ORC|RE|4422^EHR|13696^IIS",
                         "RXA|0|1|20240301||08^HepB^CVX|0.5|mL^mL^UCUM||00^New Record^NIP001")
    imm = only(r, "Immunization")
    assert _values(imm) == {"PLAC": "4422", "FILL": "13696"}
    # the id still derives from the filler number (stable across this change)
    assert imm["id"] == identity.resource_id("Immunization", identity.org_system("HOSPA", "immunization"),
                                             "13696|08")


def test_siu_start_from_tq1_and_aig_resources_by_name():
    sch = "SCH|A100^HIS|F200^RIS|||||CHK^Checkup^L|||^^^20240321090000+0800^20240321093000+0800"
    r = convert_segments("SIU^S12^SIU_S12", sch, "TQ1|||||||20240322080000+0800|20240322083000+0800", PID,
                         "RGS|1", "AIS|1||58410-2^CBC panel^LN", "AIG|1||123^ABC Cell Counter^L|011^Lab Equipment^L")
    appt = only(r, "Appointment")
    assert (appt["start"], appt["end"]) == ("2024-03-22T08:00:00+08:00", "2024-03-22T08:30:00+08:00")
    assert appt["serviceType"][0]["coding"][0]["code"] == "58410-2"
    assert {"actor": {"display": "ABC Cell Counter"}, "status": "accepted"} in appt["participant"]
    assert not r.resources("Practitioner")          # a cell counter is not a person
    # an AIS with its own start still wins over TQ1
    r = convert_segments("SIU^S12^SIU_S12", sch, "TQ1|||||||20240322080000+0800", PID,
                         "RGS|1", "AIS|1||58410-2^CBC panel^LN|20240322100000+0800")
    assert only(r, "Appointment")["start"] == "2024-03-22T10:00:00+08:00"


def test_pv2_expected_dates_are_a_planned_encounters_period_only():
    pv2 = "PV2||||||||20240325080000+0800|20240328120000+0800"
    planned = only(convert_segments("ADT^A05^ADT_A05", "EVN|A05", PID, "PV1|1|I|||||||||||||||||V77^^^HOSPA^VN", pv2),
                   "Encounter")
    assert planned["status"] == "planned"
    assert planned["period"] == {"start": "2024-03-25T08:00:00+08:00", "end": "2024-03-28T12:00:00+08:00"}
    under_way = only(convert_segments("ADT^A01^ADT_A01", "EVN|A01", PID,
                                      "PV1|1|I|||||||||||||||||V77^^^HOSPA^VN" + "|" * 25 + "20240325090000+0800", pv2),
                     "Encounter")
    assert under_way["status"] == "in-progress"
    assert under_way["period"] == {"start": "2024-03-25T09:00:00+08:00"}     # an expected discharge is no end


def test_obx_after_spm_observes_the_specimen_and_is_not_a_report_result():
    r = convert_segments("ORU^R01^ORU_R01", PID,
                         "OBR|1|P1^HIS|F1^LIS|94500-6^SARS-CoV-2 RNA^LN|||20240320080000+0800" + "|" * 18 + "F",
                         "OBX|1|CWE|94500-6^SARS-CoV-2 RNA^LN||260373001^Detected^SCT||||||F",
                         "SPM|1|S1&LIS||119297000^Blood^SCT",
                         "OBX|2|SN|35659-2^Age at specimen collection^LN||^52|a^year^UCUM|||||F")
    report = only(r, "DiagnosticReport")
    specimen = only(r, "Specimen")
    by_code = {o["code"]["coding"][0]["code"]: o for o in r.resources("Observation")}
    assert [x["reference"] for x in report["result"]] == [f"Observation/{by_code['94500-6']['id']}"]
    assert report["specimen"] == [{"reference": f"Specimen/{specimen['id']}"}]
    assert by_code["35659-2"]["specimen"] == {"reference": f"Specimen/{specimen['id']}"}


def test_order_groups_without_numbers_and_with_one_set_id_stay_apart():
    """Three ORC/OBR groups without placer or filler numbers, each OBR-1 "1" (FHIR-Converter's
    OML-O21-03 sample): three orders, none overwriting another."""
    groups = []
    for code in ("57698-3", "24331-1", "2093-3"):
        groups += [f"ORC|SC|||GRP-{code}", f"OBR|1|||{code}^Lipid^LN"]
    r = convert_segments("OML^O21^OML_O21", PID, *groups)
    requests = r.resources("ServiceRequest")
    assert sorted(sr["code"]["coding"][0]["code"] for sr in requests) == ["2093-3", "24331-1", "57698-3"]
    assert len({sr["id"] for sr in requests}) == 3
