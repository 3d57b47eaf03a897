"""``yilian mpi`` on a real database (both engines)."""

from __future__ import annotations

from hub.storage.db import write_tx
from yilian.cli import main


def _patient(name: str, phone: str) -> dict:
    return {"resourceType": "Patient", "name": [{"text": name}], "gender": "male", "birthDate": "1970-07-07",
            "telecom": [{"system": "phone", "value": phone}]}


def test_stats_review_and_rematch(db_url, tmp_path, capsys):
    from hub.api.app import Hub
    from hub.config import HubSettings

    hub = Hub(HubSettings(data_dir=tmp_path, database_url=db_url, token_secret="t" * 32, ingest_workers=0))
    try:
        store = hub.fhir.store
        with write_tx(hub.engine) as conn:
            store.write(conn, [store.prepare_create("Patient", _patient("孔令辉", "13600001111"), res_id="cli-a")])
        with write_tx(hub.engine) as conn:
            store.write(conn, [store.prepare_create("Patient", _patient("孔令辉", "13600001111"), res_id="cli-b")])
        with write_tx(hub.engine) as conn:
            store.write(conn, [store.prepare_create("Patient", {**_patient("孔令辉", "13900002222"),
                                                                "birthDate": "1970-07-08"}, res_id="cli-c")])
    finally:
        hub.close()
    args = ["--database-url", db_url, "--data-dir", str(tmp_path)]
    assert main(["mpi", "stats", *args]) == 0
    out = capsys.readouterr().out
    assert "records active (auto link): 3" in out and "persons with active records: 2" in out
    assert "review items open: 1" in out
    assert main(["mpi", "review", *args]) == 0
    assert "Patient/cli-c ~ Patient/cli-" in capsys.readouterr().out
    assert main(["mpi", "rematch", *args]) == 0
    assert "re-matched 3 automatically linked record(s); 0 changed person" in capsys.readouterr().out
