"""The hub's SCP switches pynetdicom's process-wide settings only while it runs: another pynetdicom
SCP in the same process afterwards (the front-end processor's) gets pynetdicom's own behaviour."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import RunningHub, free_port, make_settings
from tests.dicom import data
from tests.dicom.conftest import CLIENT_HANDLERS, SCU

_SETTINGS = ("STORE_RECV_CHUNKED_DATASET", "STORE_SEND_CHUNKED_DATASET", "LOG_REQUEST_IDENTIFIERS",
             "LOG_RESPONSE_IDENTIFIERS", "LOG_HANDLER_LEVEL")


def test_pynetdicom_settings_are_given_back_when_the_scp_stops(db_url, tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)  # pynetdicom's defaults
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    before = {name: getattr(_config, name) for name in _SETTINGS}
    settings = make_settings(db_url, tmp_path / "data", dicom_enabled=True, dicom_port=free_port(),
                             dicom_ae_title="YILIAN", dicom_aes={SCU: "127.0.0.1:1"})
    with RunningHub(settings):
        assert _config.STORE_RECV_CHUNKED_DATASET is True  # the hub receives into files while it runs
    assert {name: getattr(_config, name) for name in _SETTINGS} == before

    # a plain pynetdicom Storage SCP started later in the process receives the data set in memory
    received = []

    def on_store(event):
        received.append(hasattr(event.request.DataSet, "getvalue"))
        return 0

    scp_ae = AE(ae_title="LATER")
    scp_ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        scu = AE(ae_title=SCU)
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", port, ae_title="LATER", evt_handlers=CLIENT_HANDLERS)
        assert assoc.is_established
        status = assoc.send_c_store(data.instance(study_uid=generate_uid(), series_uid=generate_uid()))
        assoc.release()
    finally:
        server.shutdown()
    assert status.Status == 0
    assert received == [True]


def test_pynetdicom_settings_are_given_back_when_the_scp_cannot_start(db_url, tmp_path, monkeypatch):
    import socket

    import pytest

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    before = {name: getattr(_config, name) for name in _SETTINGS}
    with socket.socket() as taken:  # the DICOM port is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(db_url, tmp_path / "data", dicom_enabled=True, dicom_port=taken.getsockname()[1],
                                 dicom_ae_title="YILIAN", dicom_aes={SCU: "127.0.0.1:1"})
        with pytest.raises(RuntimeError, match="did not start"):  # the SCP's OSError stops the start-up
            with RunningHub(settings):
                pass
    assert {name: getattr(_config, name) for name in _SETTINGS} == before
