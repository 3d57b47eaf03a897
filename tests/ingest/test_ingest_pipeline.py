"""HL7 v2 messages through ``/ingest/messages`` into the FHIR store, read back through the FHIR
API, on both engines: ADT and ORU, duplicates, AE/AR with ERR, the stale-event guard, reprocess
after a facility-profile fix, ADT A40 merges."""

from __future__ import annotations

import pytest

from ..conftest import RunningHub, make_settings
from .conftest import ORG, ack_segments, adt_a01, hl7, item, oru_r01, post


@pytest.fixture(scope="module")
def profiles_file(tmp_path_factory):
    return tmp_path_factory.mktemp("profiles") / "profiles.toml"


@pytest.fixture(scope="module")
def hub(db_url, tmp_path_factory, profiles_file):
    settings = make_settings(db_url, tmp_path_factory.mktemp("data"), ingest_profiles_file=profiles_file)
    with RunningHub(settings) as h:
        yield h


@pytest.fixture(scope="module")
def reader(hub):
    with hub.client("system/*.rs") as c:
        yield c


def _resources(admin, res) -> dict[str, list[str]]:
    view = admin.get(f"/ingest/messages/{res['message_id']}").json()
    out: dict[str, list[str]] = {}
    for ref in view["resources"]:
        out.setdefault(ref.split("/")[0], []).append(ref)
    return out


def test_adt_a01_becomes_a_patient_and_an_encounter_readable_through_fhir(fep, admin, reader):
    msg = adt_a01("A01-1", family="王", given="小明")
    (res,) = post(fep, item(msg))
    assert res["status"] == "normalized", res["error"]
    assert res["ack_code"] == "AA" and res["permanent"] is False and res["error"] is None
    msa = ack_segments(res)[1]
    assert msa[:3] == ["MSA", "AA", msg.split(b"|")[9].decode()]
    refs = _resources(admin, res)
    (patient_ref,) = refs["Patient"]
    patient = reader.get(patient_ref).json()
    assert patient["name"][0]["text"] == "王小明" or patient["name"][0].get("family") == "王"
    assert patient["birthDate"] == "1980-01-01" and patient["gender"] == "male"
    assert any(i["value"] == "A01-1" for i in patient["identifier"])
    (enc_ref,) = refs["Encounter"]
    enc = reader.get(enc_ref).json()
    assert enc["subject"]["reference"] == patient_ref and enc["status"] == "in-progress"


def test_oru_r01_becomes_observations_and_a_report(fep, admin, reader):
    (res,) = post(fep, item(oru_r01("ORU-1", "F100", n_obx=3)))
    assert res["status"] == "normalized", res["error"]
    refs = _resources(admin, res)
    assert len(refs["Observation"]) == 3 and len(refs["DiagnosticReport"]) == 1
    values = sorted(reader.get(r).json()["valueQuantity"]["value"] for r in refs["Observation"])
    assert values == [6.0, 7.0, 8.0]
    report = reader.get(refs["DiagnosticReport"][0]).json()
    assert sorted(r["reference"] for r in report["result"]) == sorted(refs["Observation"])
    found = reader.get("Observation", params={"subject": refs["Patient"][0]}).json()
    assert found.get("total", len(found.get("entry", []))) >= 3


def test_a_lab_result_does_not_replace_the_demographics_registration_sent(fep, admin, reader):
    adt = hl7("MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201080000||ADT^A04^ADT_A01|DEMO-1|P|2.5",
              "EVN|A04|20261201080000",
              "PID|1||DEMO-7^^^HOSPA^MR||周^七||19810203|F|||文三路100号^^杭州市^浙江省^310012^CHN^H||^PRN^CP^^86^^13900139000",
              "PV1|1|O|CLINIC")
    (r1,) = post(fep, item(adt))
    assert r1["status"] == "normalized", r1["error"]
    patient_ref = _resources(admin, r1)["Patient"][0]
    # the LIS knows the patient only by MRN and a name spelled its own way
    (r2,) = post(fep, item(oru_r01("DEMO-7", "F777", n_obx=1, when="20261201100000")))
    assert r2["status"] == "normalized", r2["error"]
    (obs_ref,) = _resources(admin, r2)["Observation"]
    assert reader.get(obs_ref).json()["subject"]["reference"] == patient_ref
    patient = reader.get(patient_ref).json()
    assert patient["meta"]["versionId"] == "1"
    assert patient["birthDate"] == "1981-02-03" and patient["name"][0].get("family") == "周"
    assert patient["address"][0]["city"] == "杭州市"
    assert [t["value"] for t in patient["telecom"]] == ["+86 13900139000"]


def test_the_same_message_again_is_answered_with_the_first_outcome_and_not_applied_twice(fep, admin, reader):
    msg = oru_r01("DUP-1", "F200", n_obx=2)
    first, again_id = post(fep, item(msg, item_id="dup-a")), post(fep, item(msg, item_id="dup-b"))
    (first,), (copy,) = first, again_id
    assert copy["duplicate"] is True and copy["message_id"] == first["message_id"] and copy["ack"] == first["ack"]
    (same,) = post(fep, item(msg, item_id="dup-a"))
    assert same["duplicate"] is True and same["message_id"] == first["message_id"]
    for ref in sum(_resources(admin, first).values(), []):
        assert reader.get(ref).json()["meta"]["versionId"] == "1"


def test_a_bad_message_gets_ae_naming_segment_and_field_and_the_next_one_goes_through(fep, admin):
    bad = adt_a01("X").replace(b"PID|1||X^^^HOSPA^MR|", b"PID|1|||")  # PID-3 empty
    good = adt_a01("AFTER-BAD-1")
    r_bad, r_good = post(fep, item(bad), item(good))
    assert r_bad["status"] == "rejected" and r_bad["permanent"] is True and r_bad["ack_code"] == "AE"
    err = ack_segments(r_bad)[2]
    assert err[0] == "ERR" and err[2] == "PID^1^3" and err[3].startswith("101^")
    assert r_bad["error"].startswith("HL7 101 at PID-3")
    assert r_good["status"] == "normalized" and r_good["ack_code"] == "AA"
    view = admin.get(f"/ingest/messages/{r_bad['message_id']}", params={"payload": "true"}).json()
    assert view["error_detail"] == {"code": 101, "segment": "PID", "field": "3", "text": view["error_detail"]["text"]}


def test_an_unsupported_message_type_is_stored_and_reported(fep, admin):
    msg = hl7("MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201080000||QRY^A19^QRY_A19|Q-1|P|2.5",
              "QRD|20261201080000|R|I|Q1|||10^RD|A01-1^^^HOSPA|DEM")
    (res,) = post(fep, item(msg))
    assert res["status"] == "unsupported" and res["ack_code"] == "AR" and res["permanent"] is False
    err = ack_segments(res)[2]
    assert err[2] == "MSH^1^9" and err[3].startswith("200^")
    assert admin.get(f"/ingest/messages/{res['message_id']}").json()["message_type"] == "QRY^A19"


def test_an_older_event_after_a_newer_one_does_not_overwrite(fep, admin, reader):
    newer = adt_a01("STALE-1", trigger="A01", when="20261201100000", family="王", given="五")
    older = adt_a01("STALE-1", trigger="A01", when="20261201090000", family="赵", given="六")
    (r_new,) = post(fep, item(newer))
    (r_old,) = post(fep, item(older))
    assert r_new["status"] == r_old["status"] == "normalized"
    (patient_ref,) = _resources(admin, r_new)["Patient"]
    view = admin.get(f"/ingest/messages/{r_old['message_id']}").json()
    assert patient_ref in view["skipped_stale"] and patient_ref not in view["resources"]
    patient = reader.get(patient_ref).json()
    assert patient["meta"]["versionId"] == "1" and "赵" not in str(patient["name"])
    latest = adt_a01("STALE-1", trigger="A01", when="20261201110000", family="钱", given="七")
    post(fep, item(latest))
    patient = reader.get(patient_ref).json()
    assert patient["meta"]["versionId"] == "2" and "钱" in str(patient["name"])


def test_reprocess_after_a_facility_profile_fix(fep, admin, reader, profiles_file):
    # this LIS sends the observation code in OBX-4 and leaves OBX-3 empty
    msg = oru_r01("PROF-1", "F400", n_obx=1)
    msg = msg.replace(b"OBX|1|NM|2001-1^Test 1^LN||", b"OBX|1|NM||2001-1^Test 1^LN|")
    (res,) = post(fep, item(msg))
    assert res["status"] == "rejected" and res["error"].startswith("HL7 101 at OBX-3"), res["error"]
    profiles_file.write_text(f'[{ORG}.fields]\n"OBX-3" = "OBX-4"\n', encoding="utf-8")
    try:
        view = admin.post(f"/ingest/messages/{res['message_id']}/$reprocess").json()
        assert view["status"] == "normalized" and view["ack_code"] == "AA", view["error"]
        (obs,) = [r for r in view["resources"] if r.startswith("Observation/")]
        assert reader.get(obs).json()["code"]["coding"][0]["code"] == "2001-1"
        # the sender sees the new outcome too
        assert fep.get(f"/ingest/messages/{res['message_id']}").json()["status"] == "normalized"
    finally:
        profiles_file.unlink()


def test_adt_a40_merges_the_patients_records_into_the_survivor(fep, admin, reader):
    (r1,) = post(fep, item(adt_a01("SURV-1", family="孙", given="一")))
    (r2,) = post(fep, item(oru_r01("MERGED-1", "F300", n_obx=1)))
    survivor = _resources(admin, r1)["Patient"][0]
    merged = _resources(admin, r2)["Patient"][0]
    (obs_ref,) = _resources(admin, r2)["Observation"]
    a40 = hl7("MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201120000||ADT^A40^ADT_A39|A40-1|P|2.5",
              "EVN|A40|20261201120000",
              "PID|1||SURV-1^^^HOSPA^MR||孙^一||19800101|M",
              "MRG|MERGED-1^^^HOSPA^MR")
    (res,) = post(fep, item(a40))
    assert res["status"] == "normalized", res["error"]
    assert reader.get(obs_ref).json()["subject"]["reference"] == survivor
    m = reader.get(merged).json()
    assert m["active"] is False
    # the merged patient's record is marked, not replaced by the A40's stub
    assert m["name"][0].get("family") == "李" and m["birthDate"] == "1970-01-01"
    assert {"type": "replaced-by", "other": {"reference": survivor}} in [
        {"type": link["type"], "other": {"reference": link["other"]["reference"]}} for link in m.get("link", [])]


def test_a_mapping_bug_fails_the_message_which_is_kept_and_passes_after_the_fix(hub, fep, admin, reader):
    normalizer = hub.hub.ingest.normalizer
    fixed = normalizer.convert

    def broken(message, **kw):  # stands for a mapping release with a bug
        raise KeyError("OBX-5")

    normalizer.convert = broken
    try:
        (res,) = post(fep, item(oru_r01("BUG-1", "F500", n_obx=1)))
    finally:
        normalizer.convert = fixed  # the fixed mapping is deployed
    assert res["status"] == "failed" and res["permanent"] is False and res["ack_code"] == "AR"
    assert ack_segments(res)[2][3].startswith("207^")
    assert "KeyError" in admin.get(f"/ingest/messages/{res['message_id']}").json()["error_detail"]["text"]
    r = admin.post("/ingest/$reprocess", json={"status": "failed", "organization": ORG, "wait": True})
    assert res["message_id"] in r.json()["message_ids"]
    view = admin.get(f"/ingest/messages/{res['message_id']}").json()
    assert view["status"] == "normalized" and view["attempts"] == 1
    assert all(reader.get(ref).status_code == 200 for ref in view["resources"])


def test_concurrent_senders_writing_the_same_patients_all_end_normalized(hub, admin):
    import threading
    import time

    from .conftest import ingest_client

    results: list[dict] = []
    lock = threading.Lock()

    def send(k: int) -> None:
        with ingest_client(hub) as c:
            for j in range(3):
                got = post(c, *[item(oru_r01(f"CONC-{(k + i) % 3}", f"FC{k}-{j}-{i}", n_obx=2)) for i in range(10)])
                with lock:
                    results.extend(got)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 120
    assert all(r["status"] in ("normalized", "received") for r in results), {r["status"] for r in results}
    pending = [r["message_id"] for r in results if r["status"] == "received"]
    deadline = time.monotonic() + 120  # a liveness bound for retries by the worker, not a timed assertion
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        pending = [m for m in pending if admin.get(f"/ingest/messages/{m}").json()["status"] == "received"]
    assert not pending
    assert {admin.get(f"/ingest/messages/{r['message_id']}").json()["status"] for r in results} == {"normalized"}


def test_a_facility_profile_charset_corrects_a_wrong_msh18_on_reprocess(fep, admin, reader, profiles_file):
    # this HIS declares ISO-8859-1 but sends GB18030: read as declared, the name is mojibake
    text = adt_a01("CHARSET-1", family="张", given="三丰").decode("utf-8").replace("UNICODE UTF-8", "8859/1")
    (res,) = post(fep, item(text.encode("gb18030")))
    assert res["status"] == "normalized", res["error"]
    (patient_ref,) = _resources(admin, res)["Patient"]
    assert "张三丰" not in str(reader.get(patient_ref).json()["name"])
    profiles_file.write_text(f'[{ORG}]\ncharset = "GB18030"\n', encoding="utf-8")
    try:
        view = admin.post(f"/ingest/messages/{res['message_id']}/$reprocess").json()
        assert view["status"] == "normalized", view["error"]
        assert "张三丰" in str(reader.get(patient_ref).json()["name"])
    finally:
        profiles_file.unlink()


def test_a_batch_file_is_normalized_message_by_message(fep, admin, reader):
    good = [adt_a01("BATCH-1"), oru_r01("BATCH-2", "FB1", n_obx=1)]
    envelope = b"FHS|^~\\&|HIS|HOSPA\rBHS|^~\\&|HIS|HOSPA\r" + b"".join(good) + b"BTS|2\rFTS|1\r"
    (res,) = post(fep, item(envelope, feed="his-file-drop"))
    assert res["status"] == "normalized" and res["ack_code"] == "AA", res["error"]
    acks = [s for s in ack_segments(res) if s[0] == "MSA"]
    assert [a[1] for a in acks] == ["AA", "AA"]
    refs = _resources(admin, res)
    assert len(refs["Patient"]) == 2 and len(refs["Observation"]) == 1
    assert all(reader.get(r).status_code == 200 for r in sum(refs.values(), []))

    bad = adt_a01("X").replace(b"PID|1||X^^^HOSPA^MR|", b"PID|1|||")
    (res,) = post(fep, item(adt_a01("BATCH-3") + bad))  # no envelope: plain concatenated messages
    assert res["status"] == "rejected" and res["ack_code"] == "AE" and res["permanent"] is True
    assert res["error"].startswith("HL7 101 at PID-3: message 2 of 2:")
    assert [s[1] for s in ack_segments(res) if s[0] == "MSA"] == ["AA", "AE"]


def test_a_message_refused_after_writing_leaves_no_trace_and_the_rest_of_its_batch_is_written(hub, fep, admin,
                                                                                            reader):
    """A batch is applied in one transaction without a savepoint per message: a message whose
    transaction fails after it wrote (here the store refuses it at the end) takes the whole
    transaction back, and the batch is applied again with a savepoint per message, so the other
    messages are written once and the refused one not at all."""
    from adapters.hl7v2 import parse_message
    from hub.errors import InvalidRequest
    from mappings import convert

    normalizer = hub.hub.ingest.normalizer
    real_write = normalizer.write
    attempts: list[bytes] = []

    def write(conn, result, raw, **kw):
        written = real_write(conn, result, raw, **kw)
        attempts.append(raw.payload)
        if b"REFUSED-2" in raw.payload:
            raise InvalidRequest("refused by the store after its entries were written")
        return written

    messages = [oru_r01("SAVE-1", "F611"), oru_r01("REFUSED-2", "F612"), oru_r01("SAVE-3", "F613")]
    normalizer.write = write
    try:
        results = post(fep, *(item(m) for m in messages))
    finally:
        del normalizer.write
    assert [r["status"] for r in results] == ["normalized", "rejected", "normalized"], results
    assert results[1]["ack_code"] == "AE" and "refused by the store" in results[1]["error"]
    for m, res in zip(messages, results):
        refs = [e["request"]["url"] for e in convert(parse_message(m), organization=ORG).bundle["entry"]
                if not e["request"].get("ifNoneMatch")]
        codes = {reader.get(ref).status_code for ref in refs}
        assert codes == ({404} if res["status"] == "rejected" else {200}), (res["status"], refs, codes)
        if res["status"] == "normalized":
            assert all(reader.get(ref).json()["meta"]["versionId"] == "1" for ref in refs)
    assert len(attempts) > len(messages)  # the batch ran again after the refusal


def test_after_a_refused_message_its_batch_runs_again_with_a_savepoint_for_it_alone(hub, fep, admin, reader):
    """The batch applied again after a message failed without a savepoint gives only that message
    a savepoint: the others applied cleanly or may; another failing then makes it one each."""
    import uuid

    from sqlalchemy import event

    from hub.errors import InvalidRequest

    normalizer = hub.hub.ingest.normalizer
    real_write = normalizer.write
    savepoints: list[str] = []

    def write(conn, result, raw, **kw):
        written = real_write(conn, result, raw, **kw)
        if b"REFUSED" in raw.payload:
            raise InvalidRequest("refused by the store after its entries were written")
        return written

    def on_savepoint(conn, name):
        savepoints.append(name)

    def run(*mrns: str) -> list[str]:
        savepoints.clear()
        normalizer.write = write
        event.listen(hub.hub.engine, "savepoint", on_savepoint)
        try:
            results = post(fep, *(item(oru_r01(m, uuid.uuid4().hex[:10])) for m in mrns))
        finally:
            event.remove(hub.hub.engine, "savepoint", on_savepoint)
            del normalizer.write
        return [r["status"] for r in results]

    mrns = [f"SP-{k}-{uuid.uuid4().hex[:6]}" for k in range(5)]
    assert run(mrns[0], mrns[1], "REFUSED-" + mrns[2], mrns[3], mrns[4]) == [
        "normalized", "normalized", "rejected", "normalized", "normalized"]
    assert len(savepoints) == 1
    mrns = [f"SP-{k}-{uuid.uuid4().hex[:6]}" for k in range(4)]
    assert run("REFUSED-" + mrns[0], mrns[1], "REFUSED-" + mrns[2], mrns[3]) == [
        "rejected", "normalized", "rejected", "normalized"]
    # the first refused in a savepoint, then the second refused fails without one: a savepoint each
    assert len(savepoints) == 1 + 4


def test_the_messages_of_a_batch_are_written_to_the_store_together(hub, fep, admin, reader):
    """Messages whose transactions are plain PUTs by id (an ORU^R01) share one FhirStore.write
    per batch: each message's resources are written once, at version 1, and each message lists
    its own."""
    import uuid

    store = hub.hub.fhir.store
    calls: list[set[str]] = []
    real_write = store.write

    def write(conn, versions):
        calls.append({v.resource["subject"]["reference"] for v in versions
                      if v.res_type == "Observation" and v.resource})
        return real_write(conn, versions)

    post(fep, item(oru_r01(f"SHARED-FIRST-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:10])))  # the lab's Organization
    mrns = [f"SHARED-{k}-{uuid.uuid4().hex[:6]}" for k in range(4)]
    store.write = write
    try:
        results = post(fep, *(item(oru_r01(m, uuid.uuid4().hex[:10])) for m in mrns))
    finally:
        del store.write
    assert [r["status"] for r in results] == ["normalized"] * 4, results
    assert max(len(subjects) for subjects in calls) == 4  # one write held all four messages' results
    patients = set()
    for res in results:
        refs = _resources(admin, res)
        assert len(refs["Observation"]) == 3 and len(refs["Patient"]) == 1
        patients.update(refs["Patient"])
        for ref in refs["Observation"] + refs["DiagnosticReport"]:
            assert reader.get(ref).json()["meta"]["versionId"] == "1"
            assert reader.get(ref).json()["subject"]["reference"] == refs["Patient"][0]
    assert len(patients) == 4


def test_an_older_event_after_a_newer_one_in_the_same_batch_does_not_overwrite(fep, admin, reader):
    """The second message updates the Patient the first wrote: the writes shared so far are made
    before it, so its stale guard sees the newer version."""
    newer = adt_a01("STALE-B", trigger="A01", when="20261201100000", family="王", given="五")
    older = adt_a01("STALE-B", trigger="A01", when="20261201090000", family="赵", given="六")
    r_new, r_old = post(fep, item(newer), item(older))
    assert r_new["status"] == r_old["status"] == "normalized", (r_new, r_old)
    (patient_ref,) = _resources(admin, r_new)["Patient"]
    view = admin.get(f"/ingest/messages/{r_old['message_id']}").json()
    assert patient_ref in view["skipped_stale"] and patient_ref not in view["resources"]
    patient = reader.get(patient_ref).json()
    assert patient["meta"]["versionId"] == "1" and "王" in str(patient["name"])


def test_a_shared_write_refused_by_the_store_applies_each_message_in_a_savepoint(hub, fep, admin, reader):
    """When the store refuses the writes several messages share (here a store hook refuses one
    Patient), which message is at fault is not known: the batch runs again with a savepoint per
    message, and only that message is rejected, without a trace."""
    import uuid

    from sqlalchemy import event

    from hub.errors import InvalidRequest

    store = hub.hub.fhir.store

    def refuse(conn, versions):
        for v in versions:
            if v.res_type == "Patient" and v.resource and "REFUSED-AT-WRITE" in str(v.resource.get("identifier")):
                raise InvalidRequest("Patient refused by a store hook")

    savepoints: list[str] = []
    mrns = [f"SW-{k}-{uuid.uuid4().hex[:6]}" for k in range(3)]
    mrns[1] = "REFUSED-AT-WRITE-" + mrns[1]
    messages = [oru_r01(m, uuid.uuid4().hex[:10]) for m in mrns]
    store.before_write.insert(0, refuse)

    def on_savepoint(conn, name):
        savepoints.append(name)

    event.listen(hub.hub.engine, "savepoint", on_savepoint)
    try:
        results = post(fep, *(item(m) for m in messages))
    finally:
        store.before_write.remove(refuse)
        event.remove(hub.hub.engine, "savepoint", on_savepoint)
    assert [r["status"] for r in results] == ["normalized", "rejected", "normalized"], results
    assert "refused by a store hook" in results[1]["error"]
    assert len(savepoints) == 3
    from adapters.hl7v2 import parse_message
    from mappings import convert

    for m, res in zip(messages, results):
        refs = [e["request"]["url"] for e in convert(parse_message(m), organization=ORG).bundle["entry"]
                if not e["request"].get("ifNoneMatch")]
        codes = {reader.get(ref).status_code for ref in refs}
        assert codes == ({404} if res["status"] == "rejected" else {200}), (res["status"], refs, codes)
