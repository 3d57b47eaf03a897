"""HL7 v2 over MLLP: store first, acknowledge second.

HL7 v2.5 chapter 2, section 2.9 (acknowledgment rules) and Appendix C (MLLP). For each message:

* it is parsed (``adapters.hl7v2``) with the site's character-set override for its sender; a
  message that cannot be read gets ``AE`` (``CE`` in enhanced mode) with an ERR segment saying
  why, or ``AR``/``CR`` for an unsupported message type, event, processing id or version
  (table 0357 codes 200-203, section 2.9.2.2); the raw bytes are kept in the dead letters;
* it is committed to the outbox; only then is it acknowledged. A message that cannot be stored
  (outbox full, I/O error) gets ``AE``/``CE`` with ERR 207, never a false ``AA``/``CA``;
* **original mode** (MSH-15 and MSH-16 empty): the answer is the hub's application ACK if it
  arrives within ``application_ack_wait_s`` (0 by default), otherwise the front-end
  processor's own ``AA`` -- it is the receiving application from the sender's point of view
  and has taken responsibility for the message (store and forward);
* **enhanced mode** (MSH-15/MSH-16 valued; relayed for up to ``enhanced_application_ack_wait_s``,
  60 s by default): a commit ACK ``CA`` as MSH-15 asks (AL/SU, empty =
  AL; NE/ER: none on success), then, as MSH-16 asks (AL, ER on errors, SU on success), the
  hub's application ACK on the same connection when it arrives within the wait;
* a message whose sender, control id (MSH-10) and bytes equal an earlier one still in the outbox
  (retention) is not stored again: the sender gets the ACK it got the first time.

The connection stays usable after any error except an oversized frame (then it is closed).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from adapters.hl7v2 import HL7ParseError, build_ack, parse_message, read_header
from adapters.hl7v2.errors import APPLICATION_INTERNAL_ERROR
from adapters.mllp import MLLPFrameError, MLLPFrameReader, frame

from . import outbox as ob
from .acks import AckWaiters
from .config import FepConfig, MllpConfig
from .status import NodeStats

log = logging.getLogger(__name__)

_REJECT_CODES = frozenset((200, 201, 202, 203))   # unsupported type / event / processing id / version


def tls_context(cfg) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    if cfg.tls.client_ca_file:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cfg.tls.client_ca_file)
    return ctx


def _first(hd: str, delim: str) -> str:
    return hd.split(delim, 1)[0].strip()


class MllpReceiver:
    def __init__(self, cfg: MllpConfig, site: FepConfig, outbox: ob.Outbox, stats: NodeStats, waiters: AckWaiters):
        self.cfg, self.site, self.outbox, self.stats, self.waiters = cfg, site, outbox, stats, waiters
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task, bool] = {}    # task -> busy with a message
        self._stopping = False
        self.port = cfg.port

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.cfg.host, self.cfg.port, ssl=tls_context(self.cfg),
                                                  limit=1 << 20, backlog=256)
        self.port = self._server.sockets[0].getsockname()[1]
        self.stats.receivers[self.cfg.name] = {"kind": "mllp", "port": self.port}
        log.info("MLLP receiver %s listening on %s:%d%s", self.cfg.name, self.cfg.host, self.port,
                 " (TLS)" if self.cfg.tls else "")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting; connections finish the message in hand (stored and acknowledged), then close."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections[task] = False
        peer = writer.get_extra_info("peername")
        frames = MLLPFrameReader(self.cfg.max_message_bytes)
        try:
            while not self._stopping:
                try:
                    data = await asyncio.wait_for(reader.read(65536), self.cfg.idle_timeout_s)
                except asyncio.TimeoutError:
                    break
                if not data:
                    break
                try:
                    payloads = frames.feed(data)
                except MLLPFrameError as exc:
                    log.warning("MLLP %s: closing connection from %s: %s", self.cfg.name, peer and peer[0], exc)
                    break
                if not payloads:
                    continue
                self._connections[task] = True
                for payload in payloads:
                    try:
                        acks = await self.handle(payload, writer)
                    except Exception:  # noqa: BLE001 - a bug must cost one message, not the connection
                        log.exception("MLLP %s: unexpected error handling a message", self.cfg.name)
                        err = HL7ParseError(APPLICATION_INTERNAL_ERROR, "internal error in the front-end processor; "
                                            "the message was not stored, send it again later")
                        acks = [build_ack(read_header(payload), "AE", error=err)]
                    for ack in acks:
                        writer.write(frame(ack))
                await writer.drain()
                self._connections[task] = False
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.info("MLLP %s: connection from %s lost: %s", self.cfg.name, peer and peer[0], type(exc).__name__)
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def handle(self, payload: bytes, writer: asyncio.StreamWriter | None = None) -> list[bytes]:
        """Store one message and return the ACK(s) to send now (see the module docstring)."""
        counters = self.stats.feed(self.cfg.feed)
        received_ts = time.time()
        header = override = None
        if self.site.charsets:               # the sender decides the override: read MSH first
            header = read_header(payload)
            d = header.delimiters
            override = self.site.charset_for(_first(header.raw(3), d.component), _first(header.raw(4), d.component))
        try:
            msg = parse_message(payload, override)
        except HL7ParseError as exc:
            return [await self._refuse(payload, exc, header or read_header(payload), override, received_ts)]
        h = msg.header
        d = h.delimiters
        accept = _first(h.raw(15), d.component).upper()
        app_mode = _first(h.raw(16), d.component).upper()
        enhanced = bool(accept or app_mode)
        own_ack = build_ack(msg, "CA" if enhanced else "AA")
        item = ob.NewItem(kind="hl7v2", feed=self.cfg.feed, payload=payload, order_key=_order_key(msg),
                          charset=override, dedup_key=_dedup_key(h, payload), ack=own_ack, received_ts=received_ts)
        # original mode: the sender's ACK waits for the hub's; enhanced mode: the CA goes at once and
        # the hub's application ACK follows on the connection when it comes (MSH-16 asks for it)
        wait_s = self.cfg.enhanced_application_ack_wait_s if enhanced else self.cfg.application_ack_wait_s
        wants_app_ack = wait_s > 0 and (not enhanced or app_mode in ("AL", "ER", "SU"))
        waiter = self.waiters.register(item.id) if wants_app_ack else None
        try:
            stored = await self.outbox.add(item)
        except (ob.OutboxFull, ob.OutboxError) as exc:
            if waiter is not None:
                self.waiters.discard(item.id)
            counters.failed += 1
            log.error("MLLP %s: message %s not stored: %s", self.cfg.name, h.control_id, exc)
            reason = "outbox full" if isinstance(exc, ob.OutboxFull) else "outbox unavailable"
            err = HL7ParseError(APPLICATION_INTERNAL_ERROR,
                                f"not stored by the front-end processor ({reason}); send the message again later",
                                header=h)
            return [build_ack(msg, "CE" if enhanced else "AE", error=err)]
        if stored.duplicate:
            if waiter is not None:
                self.waiters.discard(item.id)
            log.info("MLLP %s: duplicate of stored item %s (control id %s): ACK sent again", self.cfg.name,
                     stored.id, h.control_id)
            return [stored.ack or own_ack]
        counters.received += 1
        if not enhanced:
            if waiter is not None:
                hub_ack = await self.waiters.wait(item.id, waiter, wait_s)
                if hub_ack is not None:
                    # a duplicate of this message must get this same answer again
                    try:
                        await self.outbox.call(ob.set_ack, item.id, hub_ack)
                    except ob.OutboxError:
                        pass
                    return [hub_ack]
            return [own_ack]
        out = [own_ack] if accept in ("", "AL", "SU") else []
        if waiter is not None and writer is not None:
            asyncio.create_task(self._relay_application_ack(item.id, waiter, wait_s, app_mode, writer))
        elif waiter is not None:
            self.waiters.discard(item.id)
        return out

    async def _relay_application_ack(self, item_id, waiter, wait_s, app_mode, writer) -> None:
        hub_ack = await self.waiters.wait(item_id, waiter, wait_s)
        if hub_ack is None or writer.is_closing():
            return
        accepted = b"MSA|AA" in hub_ack or b"MSA|CA" in hub_ack
        if app_mode == "AL" or (app_mode == "ER" and not accepted) or (app_mode == "SU" and accepted):
            writer.write(frame(hub_ack))

    async def _refuse(self, payload: bytes, exc: HL7ParseError, header, override, received_ts) -> bytes:
        counters = self.stats.feed(self.cfg.feed)
        counters.failed += 1
        h = exc.header or header
        d = h.delimiters
        enhanced = bool(_first(h.raw(15), d.component) or _first(h.raw(16), d.component))
        if exc.code in _REJECT_CODES:
            code = "CR" if enhanced else "AR"
        else:
            code = "CE" if enhanced else "AE"
        # code and location only: the diagnostic text may quote message content (patient data)
        log.warning("MLLP %s: message %s refused with %s: HL7 error %d %s at %s-%s", self.cfg.name, h.control_id,
                    code, exc.code, exc.text, exc.segment or "?", exc.field if exc.field is not None else "?")
        item = ob.NewItem(kind="hl7v2", feed=self.cfg.feed, payload=payload, charset=override,
                          received_ts=received_ts)
        try:
            await self.outbox.call(ob.add_dead_letter, item, str(exc), "fep")
        except (ob.OutboxFull, ob.OutboxError) as store_exc:
            log.error("MLLP %s: refused message not kept: %s", self.cfg.name, store_exc)
        return build_ack(h, code, error=exc)


def _order_key(msg) -> str | None:
    """PID-3 first identifier (with its assigning authority): one patient's messages stay in order."""
    pid = msg.segment("PID")
    if pid is None:
        return None
    ident = pid.get(3, 0, 1)
    if not ident:
        return None
    authority = pid.get(3, 0, 4) or ""
    return f"pid:{ident}^{authority}"


def _dedup_key(h, payload: bytes) -> str | None:
    if not h.control_id:
        return None
    return f"{h.raw(3)}|{h.raw(4)}|{h.control_id}|{ob.content_hash(payload)}"
