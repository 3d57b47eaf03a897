"""A repeated association request is accepted as the first one was (adapters.dicom.acceptance),
over real associations with the hub's SCP: the same answer, contexts and roles, while whatever
may differ between two associations (the AE titles required, the number of associations, the
acceptor's settings) is still decided every time."""

from __future__ import annotations

import pynetdicom.acse
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_role
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet, Verification

from adapters.dicom import reactor
from tests.dicom.conftest import SCU, dicom_port, need, poll, run
from tests.dicom.test_dimse import _assoc
from tests.dicom.test_reactor import _accepted


@pytest.fixture
def negotiations(monkeypatch):
    """The presentation-context negotiations pynetdicom carries out from now on."""
    calls = []
    negotiate = pynetdicom.acse.negotiate_as_acceptor

    def counting(*args, **kwargs):
        calls.append(args[0])
        return negotiate(*args, **kwargs)

    monkeypatch.setattr(pynetdicom.acse, "negotiate_as_acceptor", counting)
    reactor._associate_rq.cache_clear()  # every request new to the hub
    return calls


def _spare_ready(pacs) -> bool:
    return pacs.hub.dicom.server.server._yilian_prepared._spare is not None


def _echo_association(pacs, contexts, **kw):
    assert poll(lambda: _spare_ready(pacs))  # the association built ahead is the one taken
    _, assoc = _assoc(pacs, contexts, **kw)
    assert assoc.is_established
    return assoc


def test_a_repeated_request_is_negotiated_once_and_each_association_gets_its_own_contexts(pacs, negotiations):
    contexts = [(Verification, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]), CTImageStorage]
    ae = pacs.hub.dicom.server.ae
    hub_sides = []
    for _ in range(3):
        client = _echo_association(pacs, contexts)
        try:
            assert [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in client.accepted_contexts] == \
                [(Verification, ExplicitVRLittleEndian), (CTImageStorage, ExplicitVRLittleEndian)]
            assert client.acceptor.maximum_length == ae.maximum_pdu_size
            assert client.acceptor.implementation_class_uid == ae.implementation_class_uid
            assert [client.send_c_echo().Status for _ in range(3)] == [0, 0, 0]
            hub_side = _accepted(pacs, client)
            assert hub_side.requestor.ae_title == SCU and hub_side.is_established
            hub_sides.append(hub_side)
        finally:
            client.release()
    assert len(negotiations) == 1
    first, *others = [hub_side._accepted_cx for hub_side in hub_sides]
    assert [cx.abstract_syntax for cx in first.values()] == [Verification, CTImageStorage]
    for other in others:  # equal contexts, not the same objects
        assert other.keys() == first.keys() and all(other[k] is not first[k] for k in first)
        assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in other.values()] == \
            [(cx.abstract_syntax, cx.transfer_syntax) for cx in first.values()]


def test_an_association_accepted_while_another_is_open_is_negotiated_by_pynetdicom(pacs, negotiations):
    # only the association built ahead carries the settings it was built with; the one pynetdicom
    # builds while that one is in use is negotiated as pynetdicom negotiates
    first = _echo_association(pacs, [Verification])
    try:
        _, second = _assoc(pacs, [Verification])
        assert second.is_established and second.send_c_echo().Status == 0
        second.release()
    finally:
        first.release()
    assert len(negotiations) == 2


def test_remembered_role_replies_are_sent_again(pacs, negotiations):
    # a C-GET requestor proposes to take the storage SCP role; the reply must come back each time
    contexts = [StudyRootQueryRetrieveInformationModelGet, CTImageStorage]
    roles = [build_role(CTImageStorage, scp_role=True)]
    for _ in range(3):
        assoc = _echo_association(pacs, contexts, roles=roles)
        try:
            storage = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
            assert len(storage) == 1 and storage[0].as_scp
            assert _accepted(pacs, assoc).accepted_contexts[1].as_scu  # the hub sends the C-STOREs
        finally:
            assoc.release()
    assert len(negotiations) == 1


def test_a_changed_setting_is_negotiated_afresh(pacs, negotiations):
    ae = pacs.hub.dicom.server.ae
    saved = ae.maximum_pdu_size
    _echo_association(pacs, [Verification]).release()
    _echo_association(pacs, [Verification]).release()
    assert len(negotiations) == 1
    assert poll(lambda: _spare_ready(pacs))  # built under the settings before the change
    ae.maximum_pdu_size = 65536
    try:
        seen = []
        for _ in range(3):
            assoc = _echo_association(pacs, [Verification])
            seen.append(assoc.acceptor.maximum_length)
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        assert seen == [65536] * 3
        # the association built before the change is not used; the next one is negotiated and
        # remembered under the new settings, and the third takes what it remembered
        assert len(negotiations) == 3
    finally:
        ae.maximum_pdu_size = saved


def test_a_request_with_an_asynchronous_operations_window_is_negotiated_every_time(pacs, negotiations):
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 2
    window.maximum_number_operations_performed = 2
    for _ in range(2):
        _echo_association(pacs, [Verification], roles=[window]).release()
    assert len(negotiations) == 2


def test_a_remembered_request_is_still_rejected_when_the_acceptor_would_reject_it(pacs, negotiations):
    # dcmtk's echoscu (pynetdicom's requestor may report a fast rejection as an abort)
    echoscu = need("echoscu")
    ae = pacs.hub.dicom.server.ae
    args = (echoscu, "-aet", SCU, "-aec", "YILIAN", "127.0.0.1", dicom_port(pacs))
    for _ in range(2):
        assert poll(lambda: _spare_ready(pacs))
        assert run(*args).returncode == 0
    assert len(negotiations) == 1
    ae.require_calling_aet = ["SOMEONEELSE"]
    try:
        assert poll(lambda: _spare_ready(pacs))
        r = run(*args)
        assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stderr, r.stderr
    finally:
        ae.require_calling_aet = []
    saved = ae.maximum_associations
    assert poll(lambda: _spare_ready(pacs))
    _, other = _assoc(pacs, [Verification])  # one association kept open: it takes the one built ahead,
    assert run(*args).returncode == 0  # and the next is built when this one ends
    ae.maximum_associations = 1
    try:
        assert poll(lambda: _spare_ready(pacs))
        r = run(*args)
        assert r.returncode != 0 and "Local Limit Exceeded" in r.stderr, r.stderr
    finally:
        ae.maximum_associations = saved
        other.release()
    assert poll(lambda: _spare_ready(pacs))  # built again after each rejection
    assert run(*args).returncode == 0
    # echoscu's request once, the other association's, and echoscu's while that one was open (not
    # built ahead); the rejections did not get as far, and the last took what was remembered
    assert len(negotiations) == 3
