"""An association request seen before is accepted as it was the first time (pynetdicom 3.0).

A DICOM client sends the same A-ASSOCIATE-RQ every time it connects: its AE titles, its
presentation contexts, its user information. For an acceptor whose settings did not change, the
outcome is the same each time too: the same contexts accepted with the same transfer syntaxes,
the same role replies, the same A-ASSOCIATE-AC bytes. pynetdicom works it out afresh for every
association (about a quarter of the 0.4 ms between a peer's connect and the hub's answer):
the request PDU turned into a primitive (``A_ASSOCIATE_RQ.to_primitive``), every proposed context
negotiated against every supported one, the answer built as a primitive, then as a PDU, then
encoded.

Here, per distinct request (the decoded PDU shared by :func:`adapters.dicom.reactor._associate_rq`):

- the request's primitive is made once and shared by the associations that received it
  (:func:`share_primitive`); pynetdicom only reads it (the requestor's side of an accepted
  association is not writable once its primitive is set); a request of another protocol version
  keeps pynetdicom's path, whose rejection writes into the primitive;
- per acceptor configuration (the signature of :mod:`adapters.dicom.reactor`'s association built
  ahead, and ``UNRESTRICTED_STORAGE_SERVICE``), the first acceptance is remembered (the accepted
  and rejected contexts, the role selection replies, the A-ASSOCIATE (accept) primitive and the
  A-ASSOCIATE-AC bytes) and the next associations get copies of the contexts, the same primitive
  (only read once sent) and the same bytes (:class:`RememberingACSE`).

What may differ between two associations of the same request is still decided every time, by
pynetdicom's own code whenever it would reject: the calling AE titles required, the called AE
title, the number of associations. A request with user identity, SOP class (common) extended
negotiation or an asynchronous operations window (which call handlers and add replies) is
negotiated by pynetdicom every time, as is any association not built ahead (its settings are not
known to be the ones remembered). The events are fired as before (``EVT_REQUESTED``,
``EVT_ACSE_SENT``, ``EVT_PDU_SENT`` with the PDU, ``EVT_ACCEPTED``, ``EVT_ESTABLISHED``, and the
state machine's transitions).
"""

from __future__ import annotations

import copy
import logging
import threading

import pynetdicom
import pynetdicom.fsm
from pynetdicom import _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

log = logging.getLogger("yilian.dicom")
pynetdicom_log = logging.getLogger("pynetdicom.acse")

_ACCEPTANCES_PER_REQUEST = 8  # acceptor configurations remembered per distinct request
_AE_7 = pynetdicom.fsm.AE_7


class _RequestMemo:
    """What is known of one distinct A-ASSOCIATE-RQ: whether its acceptance may be remembered,
    and the acceptances remembered, by acceptor configuration."""

    def __init__(self) -> None:
        self.plain: bool | None = None  # no negotiation item that calls a handler (found once)
        self.acceptances: dict[tuple, _Acceptance] = {}
        self.lock = threading.Lock()


class _Acceptance:
    def __init__(self) -> None:
        self.accepted: list = []
        self.rejected: list = []
        self.roles: list = []
        self.data: bytes | None = None  # the A-ASSOCIATE-AC PDU as sent
        self.primitive = None  # the A-ASSOCIATE (accept) primitive it was made from


def share_primitive(pdu: A_ASSOCIATE_RQ) -> None:
    """Give the decoded request ``pdu`` (kept and shared by the associations that receive the
    same bytes) one primitive for all of them: ``AE_6`` calls ``pdu.to_primitive()``."""
    if pdu.protocol_version != 0x0001:
        return  # AE-6 rejects it, writing its reason into the primitive: each gets its own
    primitive = A_ASSOCIATE_RQ.to_primitive(pdu)
    primitive._yilian_request = _RequestMemo()
    pdu.to_primitive = lambda: primitive


def install_ae7() -> None:
    """Replace the state machine's AE-7 action (send the A-ASSOCIATE-AC) by :func:`send_accept_pdu`
    (once; the actions table is pynetdicom's module-level one)."""
    action = pynetdicom.fsm.ACTIONS["AE-7"]
    if action[1] is _AE_7:
        pynetdicom.fsm.ACTIONS["AE-7"] = (action[0], send_accept_pdu, action[2])


def send_accept_pdu(dul) -> str:
    """AE-7 (Sta3 + Evt7): send the A-ASSOCIATE-AC. For an acceptance :class:`RememberingACSE`
    replays or records, the remembered bytes are sent (or the PDU's bytes remembered as they are
    sent); anything else is pynetdicom's AE-7."""
    acceptance = dul.__dict__.pop("_yilian_acceptance", None)
    if acceptance is None:
        return _AE_7(dul)
    primitive = dul.to_provider_queue.get(False)
    pdu = None
    data = acceptance.data
    if data is None:
        pdu = A_ASSOCIATE_AC(primitive)
        data = acceptance.data = pdu.encode()
    if dul.socket is None:
        log.warning("Attempted to send data over closed connection")
        return "Sta6"
    dul._send_burst(data)
    if dul.assoc.get_handlers(evt.EVT_PDU_SENT):
        evt.trigger(dul.assoc, evt.EVT_PDU_SENT, {"pdu": pdu or A_ASSOCIATE_AC(primitive)})
    return "Sta6"


class RememberingACSE(ACSE):
    """pynetdicom's ACSE; an accepted association whose request and acceptor configuration were
    seen before is accepted as the first one was (see module)."""

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        memo = getattr(request, "_yilian_request", None)
        signature = getattr(self.assoc, "_yilian_signature", None)
        if memo is None or signature is None or not self._plain(memo):
            return super()._negotiate_as_acceptor()
        key = (signature, _config.UNRESTRICTED_STORAGE_SERVICE)
        acceptance = memo.acceptances.get(key)
        if acceptance is None or self._would_reject(request):
            return self._negotiate_and_remember(memo, key)

        self.requestor.ae_title = request.calling_ae_title
        self.acceptor._common_ext = {}
        assoc = self.assoc
        assoc._accepted_cx = {cx.context_id: copy.copy(cx) for cx in acceptance.accepted}
        assoc._rejected_cx = [copy.copy(cx) for cx in acceptance.rejected]
        for item in acceptance.roles:
            self.acceptor.add_negotiation_item(item)
        pynetdicom_log.info("Accepting Association")
        self.dul._yilian_acceptance = acceptance  # AE-7 sends its bytes
        try:
            # send_accept, with the A-ASSOCIATE (accept) primitive of the first acceptance: the
            # same values (the request's AE titles, the same contexts and user information)
            self.acceptor.primitive = acceptance.primitive
            self.dul.send_pdu(acceptance.primitive)
        finally:
            self.dul.__dict__.pop("_yilian_acceptance", None)
        evt.trigger(assoc, evt.EVT_ACCEPTED, {})
        assoc.is_established = True
        evt.trigger(assoc, evt.EVT_ESTABLISHED, {})

    def _negotiate_and_remember(self, memo: _RequestMemo, key: tuple) -> None:
        """pynetdicom's negotiation; an acceptance is remembered for ``key`` once its
        A-ASSOCIATE-AC has been sent from this thread."""
        acceptance = _Acceptance()
        self.dul._yilian_acceptance = acceptance
        try:
            super()._negotiate_as_acceptor()
        finally:
            self.dul.__dict__.pop("_yilian_acceptance", None)
        if not self.assoc.is_established or acceptance.data is None:
            return  # rejected, aborted, or the AC left from another thread: nothing to remember
        acceptance.accepted = [copy.copy(cx) for cx in self.assoc._accepted_cx.values()]
        acceptance.rejected = [copy.copy(cx) for cx in self.assoc._rejected_cx]
        acceptance.roles = list(self.acceptor._ext_neg[SCP_SCU_RoleSelectionNegotiation])
        acceptance.primitive = self.acceptor.primitive
        with memo.lock:
            if len(memo.acceptances) >= _ACCEPTANCES_PER_REQUEST:
                memo.acceptances.clear()
            memo.acceptances[key] = acceptance

    def _plain(self, memo: _RequestMemo) -> bool:
        """The request carries no negotiation item that calls a handler or adds a reply."""
        if memo.plain is None:
            requestor = self.requestor
            memo.plain = (requestor.user_identity is None and not requestor.sop_class_extended
                          and not requestor.sop_class_common_extended
                          and requestor.asynchronous_operations == (1, 1))
        return memo.plain

    def _would_reject(self, request) -> bool:
        """pynetdicom's reasons to reject (``_negotiate_as_acceptor``): calling AE title not
        among those required, called AE title not ours, too many associations."""
        ae = self.assoc.ae
        if ae.require_calling_aet and request.calling_ae_title not in [s.strip() for s in ae.require_calling_aet]:
            return True
        if ae.require_called_aet and request.called_ae_title != self.acceptor.ae_title.strip():
            return True
        return len([tt for tt in ae.active_associations if tt.is_acceptor]) > ae.maximum_associations
