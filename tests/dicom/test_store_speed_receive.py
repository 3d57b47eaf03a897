"""The receive path of a C-STORE (adapters.dicom.dimse_codec / reactor) gives the file pynetdicom
gives: the File Meta Information written with struct is the bytes pydicom writes for
pynetdicom's create_file_meta, the received data set follows it as sent, pydicom's writer is no
longer called, and the socket's whole reads return what pynetdicom's 4 kB reads returned."""

from __future__ import annotations

import socket
import threading
from io import BytesIO

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import dimse_messages
from pynetdicom.dsutils import create_file_meta, encode
from pynetdicom.transport import AssociationSocket

from adapters.dicom import dimse_codec, reactor
from hub.dicom import index
from hub.storage.db import read_tx
from tests.dicom import data
from tests.dicom.test_dimse import store


def _pydicoms_file_meta(sop_class: str, sop_uid: str, ts: str) -> bytes:
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_uid, transfer_syntax=ts))
    return out.getvalue()


@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498." + "1" * 37])
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_the_file_meta_is_the_bytes_pydicom_writes(sop_uid, ts):
    for sop_class in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"):  # even and odd lengths
        assert dimse_codec.file_meta_bytes(sop_class, sop_uid, ts) == _pydicoms_file_meta(sop_class, sop_uid, ts)


def test_a_received_instance_is_stored_with_that_file_meta_without_pydicoms_writer(pacs, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pydicom's file meta writer called")

    monkeypatch.setattr(dimse_messages, "write_file_meta_info", refuse)
    study, series = generate_uid(), generate_uid()
    sent = [data.instance(study_uid=study, series_uid=series, number=n, ts=ts, size=300)
            for n, ts in ((1, ExplicitVRLittleEndian), (2, ImplicitVRLittleEndian))]
    for ds in sent:  # one association each: the context's transfer syntax is the instance's
        assert store(pacs, [ds]) == [0]
    with read_tx(pacs.hub.dicom.store.engine) as conn:
        rows = {r.sop_uid: r for r in index.instances(conn, level="STUDY", keys={"StudyInstanceUID": study})}
    for ds in sent:
        row = rows[ds.SOPInstanceUID]
        stored = pacs.hub.dicom.blobs.local_path(row.blob_key).read_bytes()
        meta = _pydicoms_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID)
        assert stored.startswith(meta)
        sent_bytes = encode(ds, ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian, True)  # as the SCU sends it
        assert stored[len(meta):] == sent_bytes, "the data set as sent follows the meta"


def _socket_pair():
    a, b = socket.socketpair()
    transport = AssociationSocket.__new__(reactor.WholeReadSocket)
    transport.socket = a
    return transport, a, b


def test_whole_reads_return_what_pynetdicoms_reads_return():
    transport, a, b = _socket_pair()
    payload = bytes(range(256)) * 2000  # 512 kB, sent in pieces
    sender = threading.Thread(target=lambda: [b.sendall(payload[i:i + 70001]) for i in range(0, len(payload), 70001)])
    sender.start()
    try:
        got = transport.recv(6) + transport.recv(len(payload) - 6)
        assert got == payload and isinstance(got, bytearray)
        b.sendall(b"abc")
        b.close()  # the peer closes before the 10 bytes asked for: what came, as pynetdicom's loop
        assert transport.recv(10) == bytearray(b"abc")
        assert transport.recv(4) == bytearray()
    finally:
        sender.join()
        a.close()
