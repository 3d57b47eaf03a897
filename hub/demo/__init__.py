"""Demonstration data for a first look at the hub (``yilian demo``)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"


def prepare_demo(settings) -> None:
    """Load the demonstration bundles once (a marker file in the data folder remembers it) and
    register a demo client whose credentials are printed for the newcomer."""
    from hub.loader import load_paths
    from hub.security.tokens import list_clients, register_client
    from hub.storage.engine import make_engine
    from hub.storage.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker = settings.data_dir / ".demo-loaded"
    if not marker.exists():
        print("Loading demonstration data (Synthea: 1 hospital bundle, 1 practitioner bundle, 5 patients)…")
        if load_paths(settings, [str(DATA)]) != 0:
            raise SystemExit("demonstration data failed to load")
        print("Loading the demonstration alliance (HL7 v2 feeds of two member hospitals, recognition reference data)…")
        from hub.api.app import Hub
        from hub.demo.alliance import load_alliance

        hub = Hub(settings.model_copy(update={"dicom_enabled": False}))
        try:
            ids = load_alliance(hub)
        finally:
            hub.close()
        marker.write_text(f"loaded\n{ids['patient_h002']}\n")
    engine = make_engine(settings.db_url)
    upgrade(engine)
    secret_file = settings.data_dir / "demo-client.secret"
    if not any(c["client_id"] == "demo" for c in list_clients(engine)) or not secret_file.exists():
        secret = register_client(engine, "demo", "system/*.rs", description="demonstration read-only client")
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
    engine.dispose()
    secret = secret_file.read_text().strip()
    base = settings.fhir_base
    lines = marker.read_text().split()
    patient = lines[1] if len(lines) > 1 else "Patient/<id>"
    print(f"""
Demo client (read-only): client_id=demo client_secret={secret}
  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id=demo -d client_secret={secret} \\
          {base.rsplit('/fhir', 1)[0]}/oauth2/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -H "Authorization: Bearer $TOKEN" '{base}/Patient?_count=5'

The same person, 张三丰, is registered at two member hospitals (H001 and H002) through their HL7 v2
feeds; the master patient index links the two records, so his record at H002 shows H001's results:
  curl -H "Authorization: Bearer $TOKEN" '{base}/{patient}/$everything'
A doctor at H002 ordering a blood glucose (H002's local code B-GLU-01) learns that H001's result
of three days ago can be recognized instead of repeated (检查检验结果互认):
  DOCTOR=$(yilian token --subject dr-wang --org H002 --scopes "user/*.rs user/ServiceRequest.cruds")
  curl -H "Authorization: Bearer $DOCTOR" -H 'Content-Type: application/fhir+json' '{base}/ServiceRequest/$recognizable' \\
       -d '{{"resourceType":"ServiceRequest","status":"draft","intent":"order","subject":{{"reference":"{patient}"}},
            "code":{{"coding":[{{"system":"urn:yilian:h002:lis","code":"B-GLU-01"}}]}}}}'
""")
