"""The ingest HTTP contract over real HTTP on both engines: storing, ACKs, duplicates, errors,
authorization, listing, heartbeats (mapping-independent behaviour)."""

from __future__ import annotations

import base64
import uuid

from .conftest import ORG, ack_segments, adt_a01, hl7, ingest_client, item, post


def test_no_token_is_401_and_nothing_is_stored(hub, admin):
    import httpx

    before = admin.get("/ingest/messages", params={"_count": 1000}).json()["count"]
    r = httpx.post(f"{hub.root}/ingest/messages", json={"organization": ORG, "messages": [item(adt_a01("1"))]})
    assert r.status_code == 401
    assert r.json()["resourceType"] == "OperationOutcome"
    assert admin.get("/ingest/messages", params={"_count": 1000}).json()["count"] == before


def test_token_without_ingest_scope_is_403(hub):
    with ingest_client(hub, "system/*.cruds") as c:
        r = c.post("/ingest/messages", json={"organization": ORG, "messages": [item(adt_a01("1"))]})
    assert r.status_code == 403
    assert "yilian/ingest" in r.json()["issue"][0]["diagnostics"]


def test_organization_other_than_the_tokens_is_403(hub, fep):
    r = fep.post("/ingest/messages", json={"organization": "HOSPB", "messages": [item(adt_a01("1"))]})
    assert r.status_code == 403
    with ingest_client(hub, org=None) as c:  # a token acting for no organization
        assert c.post("/ingest/messages", json={"organization": ORG, "messages": []}).status_code == 403


def test_malformed_requests_are_400_and_store_nothing(fep, admin):
    good = item(adt_a01("m1"))
    bad_b64 = {**item(b"x"), "payload": "not base64!"}
    for body in ({"organization": ORG, "messages": [good, bad_b64]},
                 {"organization": ORG, "messages": [good, {**item(b"x"), "kind": "pdf"}]},
                 {"organization": ORG, "messages": [good, {**item(b"x"), "received_at": "yesterday"}]},
                 {"organization": ORG, "messages": "nope"}):
        r = fep.post("/ingest/messages", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    assert fep.post("/ingest/messages", content=b"{no json", headers={"content-type": "application/json"}
                    ).status_code == 400
    listed = admin.get("/ingest/messages", params={"_count": 1000}).json()["messages"]
    assert good["id"] not in {m["id"] for m in listed}


def test_more_than_1000_messages_is_413(fep):
    msgs = [item(b"MSH|", item_id=str(i)) for i in range(1001)]
    r = fep.post("/ingest/messages", json={"organization": ORG, "messages": msgs})
    assert r.status_code == 413
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unparseable_bytes_are_stored_and_rejected_with_an_ar_ack(fep, admin):
    payload = b"this is not HL7 at all"
    (res,) = post(fep, item(payload))
    assert res["status"] == "rejected" and res["permanent"] is True
    assert res["ack_code"] == "AR" and res["duplicate"] is False
    segs = ack_segments(res)
    assert segs[0][0] == "MSH" and segs[1][:2] == ["MSA", "AR"]
    assert segs[2][0] == "ERR" and segs[2][3].startswith("100^")
    assert "HL7 100" in res["error"]
    view = admin.get(f"/ingest/messages/{res['message_id']}", params={"payload": "true"}).json()
    assert base64.b64decode(view["payload"]) == payload  # the raw log keeps it as received
    assert view["status"] == "rejected" and view["error_detail"]["code"] == 100


def test_header_error_names_the_segment_and_field_and_the_next_message_goes_through(fep):
    broken = hl7("MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201080000||ADT^A01|||P|2.5", "PID|1||X^^^HOSPA^MR")
    good = adt_a01("next-1")
    res_bad, res_good = post(fep, item(broken), item(good))
    assert res_bad["status"] == "rejected" and res_bad["ack_code"] == "AR"
    err = ack_segments(res_bad)[2]
    assert err[0] == "ERR" and err[2] == "MSH^1^10" and err[3].startswith("101^")  # MSH-10 missing
    assert "MSH-10" in res_bad["error"]
    assert res_good["status"] != "rejected" and res_good["ack_code"] in ("AA", "AR")
    msa = ack_segments(res_good)[1]
    assert msa[2] == good.split(b"|")[9].decode()  # MSA-2 = MSH-10


def test_non_hl7_kinds_are_stored_as_unsupported(fep, admin):
    csv = "patient_id,name\n1,张三\n".encode()
    (res,) = post(fep, item(csv, kind="csv", feed="emr-drop"))
    assert res["status"] == "unsupported" and res["ack_code"] is None and res["ack"] is None
    assert res["permanent"] is False
    view = admin.get(f"/ingest/messages/{res['message_id']}", params={"payload": "true"}).json()
    assert view["kind"] == "csv" and base64.b64decode(view["payload"]) == csv


def test_same_item_id_again_returns_the_first_result_as_duplicate(fep):
    it = item(b"garbage that is rejected")
    (first,) = post(fep, it)
    (again,) = post(fep, it)
    assert again["duplicate"] is True and first["duplicate"] is False
    assert {k: v for k, v in again.items() if k != "duplicate"} == {k: v for k, v in first.items() if k != "duplicate"}
    a, b = post(fep, item(b"other garbage", item_id="same-in-one-request"),
                item(b"other garbage", item_id="same-in-one-request"))
    assert b["duplicate"] is True and a["message_id"] == b["message_id"]


def test_same_hl7_message_under_a_new_id_is_a_duplicate_and_kept_in_the_raw_log(fep, admin):
    msg = hl7("MSH|^~\\&|HIS|HOSPA|YILIAN|HUB|20261201080000||ADT^A01|CTRL-DUP-1|P|2.5", "BAD SEGMENT")
    (first,) = post(fep, item(msg))
    (second,) = post(fep, item(msg))
    assert second["duplicate"] is True and second["message_id"] == first["message_id"]
    assert second["ack"] == first["ack"] and second["status"] == first["status"]
    listed = admin.get("/ingest/messages", params={"_count": 1000}).json()["messages"]
    # the copy is stored (raw log keeps every delivery) but not processed: only the first is listed
    assert sum(1 for m in listed if m["control_id"] == "CTRL-DUP-1") == 1
    # same control id, different bytes: not a duplicate
    other = msg.replace(b"BAD SEGMENT", b"BAD SEGMENT TOO")
    (third,) = post(fep, item(other))
    assert third["duplicate"] is False and third["message_id"] != first["message_id"]


def test_get_message_returns_the_item_for_the_sender_only(hub, fep):
    (res,) = post(fep, item(b"nonsense"))
    got = fep.get(f"/ingest/messages/{res['message_id']}").json()
    assert got == res
    with ingest_client(hub, org="HOSPB") as other:
        assert other.get(f"/ingest/messages/{res['message_id']}").status_code == 404
    assert fep.get("/ingest/messages/999999999").status_code == 404


def test_listing_needs_admin_or_monitor_and_payload_needs_admin(hub, fep, admin):
    assert fep.get("/ingest/messages").status_code == 403
    with ingest_client(hub, "yilian/monitor", org=None) as mon:
        r = mon.get("/ingest/messages", params={"status": "rejected"})
        assert r.status_code == 200
        assert r.json()["messages"] and all(m["status"] == "rejected" for m in r.json()["messages"])
        assert all("payload" not in m for m in r.json()["messages"])
        assert mon.get("/ingest/messages", params={"payload": "true"}).status_code == 403
    r = admin.get("/ingest/messages", params={"kind": "csv", "payload": "true"})
    assert r.status_code == 200 and all("payload" in m for m in r.json()["messages"])
    assert admin.get("/ingest/messages", params={"status": "bogus"}).status_code == 400


def test_heartbeats_latest_per_node(hub, fep):
    node = "fep-" + uuid.uuid4().hex[:6]
    hb = {"organization": ORG, "node": node, "version": "0.1.0", "started_at": "2026-12-01T07:00:00Z",
          "uptime_s": 10, "receivers": {"mllp": {"port": 2575, "connections": 3}},
          "feeds": {"his-adt": {"received": 10, "forwarded": 9, "failed": 0}},
          "outbox": {"depth": 1, "oldest_pending_age_s": 2.5}, "dead_letters": 0, "disk_free_bytes": 123,
          "sent_at": "2026-12-01T07:00:10Z"}
    assert fep.post("/ingest/heartbeat", json=hb).status_code == 204
    assert fep.post("/ingest/heartbeat", json={**hb, "uptime_s": 20}).status_code == 204
    assert fep.post("/ingest/heartbeat", json={**hb, "organization": "HOSPB"}).status_code == 403
    nodes = [n for n in fep.get("/ingest/heartbeats").json()["nodes"] if n["node"] == node]
    assert len(nodes) == 1 and nodes[0]["uptime_s"] == 20 and nodes[0]["stale"] is False
    assert nodes[0]["outbox"]["depth"] == 1 and "received_at" in nodes[0]
    with ingest_client(hub, "yilian/monitor", org=None) as mon:
        assert any(n["node"] == node for n in mon.get("/ingest/heartbeats").json()["nodes"])
    with ingest_client(hub, "system/*.cruds") as nope:
        assert nope.get("/ingest/heartbeats").status_code == 403


def test_a_registered_front_end_processor_gets_a_token_and_delivers(hub):
    import httpx

    from hub.security.tokens import register_client

    client_id = "fep-hosp-a-" + uuid.uuid4().hex[:6]
    secret = register_client(hub.hub.engine, client_id, "yilian/ingest", organization=ORG)
    tok = httpx.post(f"{hub.root}/oauth2/token", data={"grant_type": "client_credentials"},
                     auth=(client_id, secret))
    assert tok.status_code == 200 and tok.json()["scope"] == "yilian/ingest"
    r = httpx.post(f"{hub.root}/ingest/messages", headers={"Authorization": f"Bearer {tok.json()['access_token']}"},
                   json={"organization": ORG, "messages": [item(b"registered client junk")]})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "rejected"


def _audit_events_about(hub, dcm_type: str, message_id: str) -> list[dict]:
    """The AuditEvents of DICOM type ``dcm_type`` naming the raw-log message (they are written
    in the background: poll for up to 30 s)."""
    import time

    with hub.client("system/AuditEvent.rs") as fhir:
        deadline = time.monotonic() + 30
        while True:
            bundle = fhir.get("AuditEvent", params={"type": f"http://dicom.nema.org/resources/ontology/DCM|{dcm_type}",
                                                    "_count": 200}).json()
            found = [e["resource"] for e in bundle.get("entry", [])
                     if any(ent.get("what", {}).get("identifier", {}).get("value") == message_id
                            for ent in e["resource"].get("entity", []))]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def test_each_ingest_request_is_audited_without_message_content(hub, fep):
    (res,) = post(fep, item(b"audited junk \xe5\xbc\xa0\xe4\xb8\x89"))
    found = _audit_events_about(hub, "110107", res["message_id"])
    assert len(found) == 1
    ev = found[0]
    assert ev["agent"][0]["altId"] == "fep-hosp-a" and ev["agent"][0]["who"]["display"] == ORG
    assert "audited junk" not in str(ev) and "张三" not in str(ev)


def test_reading_raw_payloads_is_audited(hub, admin):
    (res,) = post(ingest_client(hub), item(b"payload read junk"))
    assert "payload" in admin.get(f"/ingest/messages/{res['message_id']}", params={"payload": "true"}).json()
    found = _audit_events_about(hub, "110106", res["message_id"])
    assert len(found) == 1 and found[0]["agent"][0]["altId"] == "ops"


def test_heartbeat_turns_stale_when_a_node_stops_reporting(hub, fep):
    from hub.ingest import heartbeats
    from hub.storage.db import read_tx

    node = "fep-stale-" + uuid.uuid4().hex[:6]
    assert fep.post("/ingest/heartbeat", json={"organization": ORG, "node": node, "uptime_s": 1}).status_code == 204
    with read_tx(hub.hub.engine) as conn:
        fresh = [n for n in heartbeats.latest(conn, organization=ORG, stale_s=3600) if n["node"] == node]
        old = [n for n in heartbeats.latest(conn, organization=ORG, stale_s=0) if n["node"] == node]
    assert fresh[0]["stale"] is False and old[0]["stale"] is True


def test_each_batch_answer_closes_the_connection_so_the_next_may_go_to_another_worker(hub):
    seen: list[tuple[str, str]] = []

    def peer(response):  # the client side of the TCP connection each answer came on
        stream = response.extensions["network_stream"]
        seen.append(stream.get_extra_info("client_addr"))

    with ingest_client(hub) as c:
        c.event_hooks["response"] = [peer]
        first = c.post("/ingest/messages", json={"organization": ORG, "messages": [item(adt_a01("conn-1"))]})
        second = c.post("/ingest/messages", json={"organization": ORG, "messages": [item(adt_a01("conn-2"))]})
    assert first.status_code == second.status_code == 200
    assert first.headers["connection"] == "close" and second.json()["results"][0]["status"] == "normalized"
    assert seen[0] != seen[1]  # the second batch came on a new connection
