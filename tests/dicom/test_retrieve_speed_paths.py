"""The shortcuts of adapters.dicom.reactor / dimse_codec on the retrieval and association paths
give what pynetdicom's own code gives: the file meta walk of a stored file (C-GET / C-MOVE
sub-operations) finds split_dataset's offset and UIDs or declines, remembered UIDs are the UIDs
set_uid returns (and a UID that warns warns every time), and the A-ASSOCIATE-AC and
A-RELEASE-RP an acceptor sends are written by its association thread, not handed to the DUL."""

from __future__ import annotations

import logging
import threading

import pytest
from pydicom import dcmread
from pydicom.uid import UID, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_RELEASE_RP
from pynetdicom.sop_class import Verification
from pynetdicom.utils import set_uid

from adapters.dicom import reactor
from adapters.dicom.dimse_codec import file_meta_for_sending
from tests.conftest import free_port
from tests.dicom import data
from tests.dicom.conftest import need, run


def _files(tmp_path):
    study, series = generate_uid(), generate_uid()
    plain = data.instance(study_uid=study, series_uid=series)
    implicit = data.instance(study_uid=study, series_uid=series, number=2, ts=ImplicitVRLittleEndian)
    rle = data.instance(study_uid=study, series_uid=series, number=3, ts=RLELossless)
    extra = data.instance(study_uid=study, series_uid=series, number=4)
    extra.file_meta.ImplementationVersionName = "ODD_LEN"  # odd: padded
    extra.file_meta.SourceApplicationEntityTitle = "SENDER"
    extra.file_meta.PrivateInformationCreatorUID = "1.2.3.4.5"
    extra.file_meta.PrivateInformation = b"\x01\x02\x03"  # OB: a 4-byte length
    odd = data.instance(study_uid=study, series_uid=series, number=5, sop_uid="1.2.3.45")  # padded with \0
    return data.write([plain, implicit, rle, extra, odd], tmp_path)


def test_the_file_meta_walk_finds_what_split_dataset_finds(tmp_path):
    paths = _files(tmp_path)
    for path in paths:
        meta, offset = split_dataset(path)
        assert file_meta_for_sending(path) == (offset, meta.MediaStorageSOPClassUID,
                                               meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID)
    # the data set starts there: its first element, (0008,0016) SOP Class UID (no character set)
    offset = file_meta_for_sending(paths[3])[0]
    assert paths[3].read_bytes()[offset:offset + 4] == bytes.fromhex("08001600")


def test_the_file_meta_walk_declines_what_it_cannot_read(tmp_path):
    path = _files(tmp_path)[0]
    raw = path.read_bytes()
    no_preamble = tmp_path / "no_preamble.dcm"
    no_preamble.write_bytes(raw[128:])
    assert file_meta_for_sending(no_preamble) is None
    ds = dcmread(path)
    del ds.file_meta.MediaStorageSOPInstanceUID
    missing = tmp_path / "missing.dcm"
    ds.save_as(missing, enforce_file_format=False)
    assert file_meta_for_sending(missing) is None
    # a multi-valued UID or an empty one: pynetdicom's path (it decides what they mean)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = ["1.2.3", "1.2.4"]
    multi = tmp_path / "multi.dcm"
    ds.save_as(multi, enforce_file_format=False)
    assert file_meta_for_sending(multi) is None
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = ""
    empty = tmp_path / "empty.dcm"
    ds.save_as(empty, enforce_file_format=False)
    assert file_meta_for_sending(empty) is None


@pytest.mark.parametrize("value", [
    "1.2.840.10008.1.1", b"1.2.840.10008.1.2.1", UID("1.2.840.10008.5.1.4.1.1.2"),
    "1.2.840.10008.1.2\0", "1.2.840.10008.1.2 ", "1.2.03.4", "1.2.3." + "4" * 70, "", None,
])
def test_remembered_uids_are_what_set_uid_returns(value, caplog):
    reactor._remember_clean_uids()
    for name in ("Abstract Syntax Name", "Affected SOP Instance UID"):
        for _ in range(3):
            with caplog.at_level(logging.WARNING, logger="pynetdicom"):
                caplog.clear()
                try:
                    expected, expected_error = set_uid(value, name), None
                except ValueError as e:
                    expected, expected_error = None, str(e)
                expected_log = [r.getMessage() for r in caplog.records]
                caplog.clear()
                try:
                    got, got_error = reactor.set_uid_remembered(value, name), None
                except ValueError as e:
                    got, got_error = None, str(e)
                got_log = [r.getMessage() for r in caplog.records]
            assert (got, type(got), got_error) == (expected, type(expected), expected_error)
            assert got_log == expected_log  # a non-conformant UID warns every time
    assert "1.2.03.4" not in reactor._clean_uids


def test_remembered_uids_are_fresh_objects():
    # a UID may carry a private transfer syntax's encoding: a shared object would spread it
    first = reactor.set_uid_remembered("1.2.840.10008.1.2.1", "Transfer Syntax Name")
    second = reactor.set_uid_remembered("1.2.840.10008.1.2.1", "Transfer Syntax Name")
    assert first == second and first is not second and type(second) is UID


def test_acceptor_writes_its_association_and_release_responses_from_its_own_thread():
    writers: dict[str, list] = {}
    sent: list = []

    def pdu_sent(event):
        writers.setdefault(type(event.pdu).__name__, []).append(threading.current_thread())

    def acse_sent(event):
        sent.append((type(event.primitive).__name__, event.primitive.result))

    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_CONN_OPEN, reactor.on_conn_open),
                                            (evt.EVT_PDU_SENT, pdu_sent), (evt.EVT_ACSE_SENT, acse_sent)])
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", port, ae_title="SCP",
                              evt_handlers=[(evt.EVT_CONN_OPEN, reactor.on_conn_open)])
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        accepted = server.active_associations[0]
        assoc.release()
        assert assoc.is_released
        accepted.join(10)
        assert not accepted.is_alive() and not accepted.dul.is_alive()
        assert accepted.is_released
    finally:
        server.shutdown()
    assert writers[A_ASSOCIATE_AC.__name__] == [accepted]
    assert writers[A_RELEASE_RP.__name__] == [accepted]
    assert ("A_ASSOCIATE", 0) in sent and ("A_RELEASE", "affirmative") in sent  # EVT_ACSE_SENT as before


def test_a_rejected_association_is_still_rejected():
    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    scp.require_called_aet = True
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_CONN_OPEN, reactor.on_conn_open)])
    try:
        # dcmtk's echoscu as the requestor (see tests/dicom/test_dimse.py: pynetdicom's may report a
        # fast rejection as an abort)
        r = run(need("echoscu"), "-aet", "SCU", "-aec", "OTHER", "127.0.0.1", port)
        assert r.returncode != 0 and "Association Rejected" in r.stderr, r.stderr
    finally:
        server.shutdown()


@pytest.mark.parametrize("max_pdu", [0, 16, 100, 16384, 1 << 20])
@pytest.mark.parametrize("data_length", [0, 1, 9, 16378, 16379, 70_001])
def test_file_bursts_are_the_pdus_pynetdicom_would_send_one_by_one(tmp_path, monkeypatch, max_pdu, data_length):
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    from adapters.dicom import dimse_codec

    monkeypatch.setattr(dimse_codec, "BURST_BYTES", 40_000)
    path = tmp_path / "f.dcm"
    path.write_bytes(b"H" * 50 + bytes(i % 251 for i in range(data_length)))
    command = bytes(range(90))
    prefix_pdvs = list(dimse_codec._fragments(command, max_pdu, b"\x01", b"\x03"))
    prefix = b"".join(dimse_codec.p_data_tf_header(5, len(f)) + c + f for c, f in prefix_pdvs)
    sent = b""
    for pdata in dimse_codec._file_bursts(5, (path, 50), max_pdu, prefix):
        [(context_id, burst)] = pdata.presentation_data_value_list
        assert context_id == 5 and isinstance(burst, dimse_codec.PDataBurst)
        sent += burst
    one_by_one = b""
    for control, fragment in [*prefix_pdvs, *dimse_codec._file_fragments((path, 50), max_pdu)]:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((5, control + fragment))
        one_by_one += P_DATA_TF(pdata).encode()
    assert sent == one_by_one
