"""The direct command-set codec (adapters.dicom.dimse_codec): byte for byte what pynetdicom encodes,
the same primitives decoded, pynetdicom's own path kept where it must be, and the hub's associations
served by it (a C-ECHO, C-FIND with cancel, C-GET and C-MOVE through real associations are in
test_dimse.py and test_reactor.py)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom import AE, evt, service_class
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification

from adapters.dicom import dimse_codec
from tests.dicom.conftest import CLIENT_HANDLERS, dicom_port, poll
from tests.dicom.test_dimse import _assoc
from tests.dicom.test_reactor import _accepted

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _primitive(cls, **values):
    p = cls()
    for k, v in values.items():
        setattr(p, k, v)
    return p


PRIMITIVES = [
    (_primitive(C_ECHO, MessageID=7, AffectedSOPClassUID=Verification), False),
    (_primitive(C_ECHO, MessageIDBeingRespondedTo=7, AffectedSOPClassUID=Verification, Status=0), True),
    (_primitive(C_ECHO, MessageIDBeingRespondedTo=8, AffectedSOPClassUID=Verification, Status=0x0122,
                ErrorComment="odd"), True),
    (_primitive(C_FIND, MessageID=3, AffectedSOPClassUID=FIND, Priority=2, Identifier=BytesIO(b"\x08\x00")), False),
    (_primitive(C_FIND, MessageIDBeingRespondedTo=3, AffectedSOPClassUID=FIND, Status=0xFF00,
                Identifier=BytesIO(b"\x08\x00\x52\x00")), True),
    (_primitive(C_FIND, MessageIDBeingRespondedTo=3, AffectedSOPClassUID=FIND, Status=0xA900,
                ErrorComment="unknown key", OffendingElement=[0x00100010, 0x00080020]), True),
    (_primitive(C_FIND, MessageIDBeingRespondedTo=3, AffectedSOPClassUID=FIND, Status=0), True),
    (_primitive(C_STORE, MessageID=9, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3.45", Priority=0,
                MoveOriginatorApplicationEntityTitle="MOVESCU", MoveOriginatorMessageID=5,
                DataSet=BytesIO(b"xx")), False),
    (_primitive(C_STORE, MessageIDBeingRespondedTo=9, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3.456",
                Status=0), True),
    (_primitive(C_GET, MessageIDBeingRespondedTo=1, AffectedSOPClassUID=FIND, Status=0xFF00,
                NumberOfRemainingSuboperations=4, NumberOfCompletedSuboperations=1,
                NumberOfFailedSuboperations=0, NumberOfWarningSuboperations=0), True),
    (_primitive(C_MOVE, MessageID=1, AffectedSOPClassUID=FIND, MoveDestination="DEST", Priority=1,
                Identifier=BytesIO(b"12")), False),
    (_primitive(C_CANCEL, MessageIDBeingRespondedTo=4), True),
]


def _stock(primitive, is_response: bool) -> bytes:
    msg = (_RSP_TO_MESSAGE if is_response else _RQ_TO_MESSAGE)[primitive.__class__]()
    msg.primitive_to_message(primitive)
    return encode(msg.command_set, True, True)


def _layout(primitive, is_response: bool):
    return (dimse_codec._RSP_LAYOUT if is_response else dimse_codec._RQ_LAYOUT)[primitive.__class__]


@pytest.mark.parametrize(("primitive", "is_response"), PRIMITIVES)
def test_command_sets_are_encoded_as_pynetdicom_encodes_them(primitive, is_response):
    encoded, _, _ = dimse_codec.encode_command_set(primitive, _layout(primitive, is_response))
    assert encoded == _stock(primitive, is_response)


@pytest.mark.parametrize(("primitive", "is_response"), PRIMITIVES)
def test_messages_decode_to_pynetdicoms_primitive(primitive, is_response):
    encoded, dataset, _ = dimse_codec.encode_command_set(primitive, _layout(primitive, is_response))
    decoded = dimse_codec.decode_command_set(encoded)
    fast, keyword = decoded
    assert (keyword is not None) == (dataset is not None)
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((1, b"\x03" + encoded))
    if dataset is not None:
        pdata.presentation_data_value_list.append((1, b"\x02" + dataset.getvalue()))
        getattr(fast, keyword).write(dataset.getvalue())
    msg = DIMSEMessage()
    assert msg.decode_msg(pdata)
    stock = msg.message_to_primitive()
    assert type(fast) is type(stock)
    names = [n for n in ("MessageID", "MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
                         "Status", "ErrorComment", "OffendingElement", "NumberOfRemainingSuboperations",
                         "NumberOfCompletedSuboperations", "MoveOriginatorApplicationEntityTitle", "Priority",
                         "MoveDestination")
             if hasattr(stock, n)]
    assert [getattr(fast, n) for n in names] == [getattr(stock, n) for n in names]
    if keyword is not None:
        assert getattr(fast, keyword).getvalue() == getattr(stock, keyword).getvalue()


def _received(fragments: list[list[tuple[int, bytes]]]):
    """What a FastCommandSets delivers for P-DATA primitives of these PDVs."""
    provider = dimse_codec.FastCommandSets(type("A", (), {"get_handlers": staticmethod(lambda event: [])})())
    for pdvs in fragments:
        pdata = P_DATA()
        pdata.presentation_data_value_list = [list(p) for p in pdvs]
        provider.receive_primitive(pdata)
    return [provider.msg_queue.get_nowait() for _ in range(provider.msg_queue.qsize())]


def test_an_identifier_in_fragments_over_several_p_data_is_collected():
    find = PRIMITIVES[3][0]
    command, _, _ = dimse_codec.encode_command_set(find, _layout(find, False))
    [(context_id, received)] = _received([[(5, b"\x03" + command), (5, b"\x00ab")], [(5, b"\x00cd")],
                                          [(5, b"\x02ef")]])
    assert context_id == 5 and isinstance(received, C_FIND) and received.MessageID == 3
    assert received.Identifier.getvalue() == b"abcdef"


def test_values_the_codec_does_not_write_as_pynetdicom_would_take_pynetdicoms_path():
    non_ascii = _primitive(C_ECHO, MessageIDBeingRespondedTo=1, AffectedSOPClassUID=Verification, Status=0x0122,
                           ErrorComment="d\u00e9j\u00e0")
    with pytest.raises(dimse_codec._Unsupported):
        dimse_codec.encode_command_set(non_ascii, _layout(non_ascii, True))
    # a command set with an element the message type does not define
    encoded, _, _ = dimse_codec.encode_command_set(PRIMITIVES[0][0], _layout(*PRIMITIVES[0]))
    with pytest.raises(dimse_codec._Unsupported):
        dimse_codec.decode_command_set(encoded + dimse_codec._element(0x00001000, b"1.2\0"))


def _fragments_of(primitive, is_response: bool, max_pdu: int, fast: bool) -> list[bytes]:
    msg = (_RSP_TO_MESSAGE if is_response else _RQ_TO_MESSAGE)[primitive.__class__]()
    if not fast:
        msg.primitive_to_message(primitive)
        return [pdv for p in msg.encode_msg(1, max_pdu) for _, pdv in p.presentation_data_value_list]
    command, dataset, _ = dimse_codec.encode_command_set(primitive, _layout(primitive, is_response))
    out = list(dimse_codec._fragments(command, max_pdu, b"\x01", b"\x03"))
    if dataset is not None and dataset.getvalue():
        out += dimse_codec._fragments(dataset.getvalue(), max_pdu, b"\x00", b"\x02")
    return [control + fragment for control, fragment in out]


@pytest.mark.parametrize("max_pdu", [0, 16, 100, 16384])
def test_messages_are_fragmented_as_pynetdicom_fragments_them(max_pdu):
    big = _primitive(C_STORE, MessageID=9, AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3.45", Priority=0,
                     DataSet=BytesIO(bytes(range(256)) * 200))
    for primitive, is_response in [*PRIMITIVES, (big, False)]:
        assert _fragments_of(primitive, is_response, max_pdu, True) == \
            _fragments_of(primitive, is_response, max_pdu, False)


def test_bursts_are_the_pdus_pynetdicom_would_send_one_by_one(monkeypatch):
    monkeypatch.setattr(dimse_codec, "BURST_BYTES", 40_000)
    pdvs = [bytes([i % 4]) + bytes(range(i % 200)) * 100 for i in range(60)]
    bursts = list(dimse_codec._bursts(3, [(pdv[:1], pdv[1:]) for pdv in pdvs]))
    assert len(bursts) > 1
    sent = b""
    for pdata in bursts:
        [(context_id, burst)] = pdata.presentation_data_value_list
        assert context_id == 3 and isinstance(burst, dimse_codec.PDataBurst)
        assert len(burst) <= 40_000
        sent += burst
    one_by_one = b""
    for pdv in pdvs:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((3, pdv))
        one_by_one += P_DATA_TF(pdata).encode()
    assert sent == one_by_one


def test_the_hubs_associations_use_the_codec_and_answer_a_client_with_log_handlers(pacs):
    # this client keeps handlers on EVT_DIMSE_SENT/RECV: its messages take pynetdicom's path
    seen = []
    handlers = [*CLIENT_HANDLERS, (evt.EVT_DIMSE_SENT, lambda e: seen.append("sent")),
                (evt.EVT_DIMSE_RECV, lambda e: seen.append("recv"))]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN", evt_handlers=handlers)
    try:
        assert isinstance(_accepted(pacs, assoc).dimse, dimse_codec.FastCommandSets)
        assert [assoc.send_c_echo().Status for _ in range(20)] == [0] * 20
        assert seen.count("sent") == 20 and seen.count("recv") == 20
    finally:
        assoc.release()
    _, plain = _assoc(pacs, [Verification])
    try:
        assert isinstance(plain.dimse, dimse_codec.FastCommandSets)
        assert [plain.send_c_echo().Status for _ in range(20)] == [0] * 20
    finally:
        plain.release()


@pytest.mark.parametrize("message_id", [1, 513, 0xFFFF])
def test_the_direct_echo_response_is_the_command_set_pynetdicom_encodes(message_id):
    rsp = _primitive(C_ECHO, MessageIDBeingRespondedTo=message_id, AffectedSOPClassUID=Verification, Status=0)
    assert dimse_codec.echo_success_command_set(message_id) == _stock(rsp, True)


def test_the_hub_answers_c_echo_from_the_codec_with_the_pdus_pynetdicom_would_send(pacs, monkeypatch):
    """Inside an association the hub answers C-ECHO-RQ as it reads it (its EVT_C_ECHO handler
    answers every caller Success): no service class runs, and the client receives the P-DATA-TF
    that VerificationServiceClass's response would have been, for any caller (an unknown one too)."""
    served = []
    monkeypatch.setattr(service_class.VerificationServiceClass, "SCP",
                        lambda self, req, context: served.append(req))
    received: list[bytes] = []
    ae = AE(ae_title="NOT_A_PEER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dicom_port(pacs), ae_title="YILIAN",
                         evt_handlers=[*CLIENT_HANDLERS, (evt.EVT_DATA_RECV, lambda e: received.append(bytes(e.data)))])
    try:
        context_id = assoc.accepted_contexts[0].context_id
        received.clear()
        statuses = [assoc.send_c_echo(msg_id=i).Status for i in (1, 2, 0xFFFF)]
    finally:
        assoc.release()
    assert statuses == [0, 0, 0] and served == []
    expected = []
    for i in (1, 2, 0xFFFF):
        command = _stock(_primitive(C_ECHO, MessageIDBeingRespondedTo=i, AffectedSOPClassUID=Verification, Status=0),
                         True)
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        expected.append(P_DATA_TF(pdata).encode())
    assert b"".join(received).startswith(b"".join(expected))


def test_an_echo_inside_an_association_is_answered_as_it_is_read(pacs, monkeypatch):
    """The hub's one-thread DUL answers a whole C-ECHO-RQ from the bytes it reads: no PDU object,
    no state-machine event, no DIMSE queue; the association stays usable (a C-ECHO in two command
    fragments, which takes pynetdicom's path, is answered too) and releases normally."""
    _, assoc = _assoc(pacs, [Verification])
    hub_side = _accepted(pacs, assoc)
    decoded = []
    plain_decode = hub_side.dul._decode_pdu
    monkeypatch.setattr(hub_side.dul, "_decode_pdu", lambda data: decoded.append(data[0]) or plain_decode(data))
    try:
        assert [assoc.send_c_echo(msg_id=i).Status for i in range(1, 51)] == [0] * 50
        assert decoded == [] and hub_side.dul.state_machine.current_state == "Sta6"
        # the same request as two command fragments in one P-DATA-TF: read by pynetdicom
        context_id = assoc.accepted_contexts[0].context_id
        command = _stock(_primitive(C_ECHO, MessageID=77, AffectedSOPClassUID=Verification), False)
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x01" + command[:20]))
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command[20:]))
        responses = []  # the answer to a request the client did not send reaches its reactor
        monkeypatch.setattr(assoc, "_serve_request", lambda msg, context: responses.append(msg))
        assoc.dul.socket.send(P_DATA_TF(pdata).encode())
        assert poll(lambda: responses, timeout=5)
        assert (responses[0].MessageIDBeingRespondedTo, responses[0].Status) == (77, 0) and decoded == [0x04]
        assert assoc.send_c_echo(msg_id=78).Status == 0 and decoded == [0x04]
    finally:
        assoc.release()
    assert assoc.is_released
