"""DICOM: a C-STORE SCP that keeps every instance durably before answering success, and a
forwarder that sends the kept instances to the hub (C-STORE SCU or DICOMweb STOW-RS).

DICOM PS3.4 Annex B (Storage Service Class): status 0x0000 success is returned only after the
instance is written to a file, fsynced, renamed into place (directory fsynced) and recorded in the
outbox database; any failure to do so answers 0xA700 (Refused: Out of Resources), which tells the
modality to send again later. PS3.7 section 9.1.1 (C-STORE) and PS3.10 (the file format, written
as received: ``event.encoded_dataset()`` keeps the sender's transfer syntax, nothing is decoded).

Forwarding (PS3.4 B.2.3 status classes): 0x0000 and the warnings 0xB000/0xB006/0xB007 confirm
the instance; 0xA7xx (out of resources), a refused or aborted association, network errors mean
"again later" (backoff); 0xA9xx (data set does not match SOP class), 0xCxxx (cannot understand),
0x0122 (SOP class not supported) are permanent: the instance goes to the dead letters. STOW-RS
(PS3.18 section 10.5): 200 stores it, 409/400 with a failure reason are permanent, 5xx/429 retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from . import outbox as ob
from .config import DicomConfig, FepConfig
from .forwarder import Backoff
from .hub_client import HubClient, HubUnavailable
from .status import NodeStats

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
_WARNINGS = (0xB000, 0xB006, 0xB007)

def _record(conn: sqlite3.Connection, receiver: str, sop_uid: str, sop_class: str, path: str,
            calling: str) -> str | None:
    """Record a kept instance; returns the path of a file it replaces (to delete), if any."""
    row = conn.execute("SELECT id, path FROM dicom_items WHERE receiver = ? AND sop_instance_uid = ?"
                       " AND state = 'pending'", (receiver, sop_uid)).fetchone()
    if row is not None:
        # the same instance again before it was forwarded: one item, the latest bytes
        conn.execute("UPDATE dicom_items SET path = ?, sop_class_uid = ? WHERE id = ?", (path, sop_class, row[0]))
        return row[1] if row[1] != path else None
    conn.execute("INSERT INTO dicom_items (id, receiver, sop_instance_uid, sop_class_uid, path, calling_ae,"
                 " received_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (str(uuid.uuid4()), receiver, sop_uid, sop_class, path, calling, time.time()))
    return None


def _pending(conn: sqlite3.Connection, receiver: str, limit: int) -> list[tuple]:
    return conn.execute("SELECT id, sop_instance_uid, sop_class_uid, path FROM dicom_items"
                        " WHERE receiver = ? AND state = 'pending' ORDER BY seq LIMIT ?", (receiver, limit)).fetchall()


def _delivered(conn: sqlite3.Connection, item_id: str, path: str, now: float) -> None:
    """The hub confirmed the instance kept at ``path``. If the same instance was received again
    meanwhile (its item now holds the newer file), the newer bytes still have to go: it stays
    pending."""
    conn.execute("UPDATE dicom_items SET state = 'delivered', delivered_ts = ?, attempts = attempts + 1"
                 " WHERE id = ? AND path = ? AND state = 'pending'", (now, item_id, path))


def _failed(conn: sqlite3.Connection, ids: list[str], error: str) -> None:
    conn.executemany("UPDATE dicom_items SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                     [(error, i) for i in ids])


def _dead(conn: sqlite3.Connection, item_id: str, path: str, reason: str, feed: str, now: float) -> None:
    """The hub refused the file at ``path`` for good (unless a newer receipt replaced it: see _delivered)."""
    row = conn.execute("SELECT received_ts FROM dicom_items WHERE id = ? AND path = ? AND state = 'pending'",
                       (item_id, path)).fetchone()
    if row is None:
        return
    conn.execute("UPDATE dicom_items SET state = 'dead', last_error = ? WHERE id = ?", (reason, item_id))
    conn.execute("INSERT OR REPLACE INTO dead_letters (id, kind, feed, received_at, filename, payload, reason, source,"
                 " dead_ts) VALUES (?, 'dicom', ?, ?, ?, x'', ?, 'hub', ?)",
                 (item_id, feed, ob.iso(row[0]), path, reason, now))


def expired_dicom(conn: sqlite3.Connection, older_than_ts: float, limit: int = 1000) -> list[tuple[str, str]]:
    """Confirmed instances past retention, (id, path): the caller deletes the files, then the rows
    (:func:`forget_dicom`), so a crash in between leaves a row to retry rather than a file nobody
    would ever delete."""
    return conn.execute("SELECT id, path FROM dicom_items WHERE state = 'delivered' AND delivered_ts < ? LIMIT ?",
                        (older_than_ts, limit)).fetchall()


def forget_dicom(conn: sqlite3.Connection, ids: list[str]) -> None:
    conn.executemany("DELETE FROM dicom_items WHERE id = ? AND state = 'delivered'", [(i,) for i in ids])


def _kept_paths(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT path FROM dicom_items")]


# the receiver's own file names: "<SOP Instance UID>.<12 hex>.dcm" (see _on_store) and the
# temporary ".<that name>.<8 hex>.tmp" of _write_durably; nothing else in the folder is swept
_OWN_FILE = re.compile(r"[0-9][0-9.]*\.[0-9a-f]{12}\.dcm|\.[0-9][0-9.]*\.[0-9a-f]{12}\.dcm\.[0-9a-f]{8}\.tmp")


def _write_durably(folder: Path, name: str, data: bytes) -> Path:
    """Write, fsync, rename into place, fsync the folder: after this the file survives a crash."""
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    final = folder / name
    os.replace(tmp, final)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


class DicomReceiver:
    """The SCP (pynetdicom's threaded server) and its forwarder (an asyncio task)."""

    def __init__(self, cfg: DicomConfig, site: FepConfig, outbox: ob.Outbox, stats: NodeStats):
        self.cfg, self.site, self.outbox, self.stats = cfg, site, outbox, stats
        self.storage = cfg.storage_dir or site.data_dir / "dicom" / cfg.name
        self.port = cfg.port
        self._server = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._wake = threading.Event()
        self._stow = None

    @property
    def connections(self) -> int:
        return len(self._server.active_associations) if self._server is not None else 0

    async def start(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.storage.mkdir(parents=True, exist_ok=True)
        await self._sweep()
        ae = AE(ae_title=self.cfg.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False,
                                       evt_handlers=[(evt.EVT_CONN_OPEN, _on_conn_open),
                                                     (evt.EVT_C_STORE, self._on_store)])
        from adapters.dicom import reactor

        # as the hub's SCP: no full gc.collect() in the acceptor loop every 60th turn (a stall of
        # the whole process), and no thread started per connection only to build its association
        reactor.without_forced_collections(self._server)
        reactor.accept_in_server_thread(self._server)
        reactor.prepare_associations_ahead(self._server)
        self.port = self._server.server_address[1]
        self.stats.receivers[self.cfg.name] = {"kind": "dicom", "port": self.port}
        self._task = asyncio.create_task(self._forward_loop(), name=f"dicom-forward-{self.cfg.name}")
        log.info("DICOM SCP %s (%s) listening on %s:%d, forwarding by %s", self.cfg.name, self.cfg.ae_title,
                 self.cfg.host, self.port, self.cfg.forward)

    async def stop(self) -> None:
        if self._server is not None:
            # shutdown() waits for the running associations, so in-flight C-STOREs finish
            await asyncio.to_thread(self._server.shutdown)
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._stow is not None:
            await self._stow.aclose()

    async def _sweep(self) -> None:
        """Delete the files of the storage folder that no item refers to, before the SCP accepts
        anything: a receipt written but not recorded when the process died (the modality got no
        success and sent the instance again), a file replaced by a newer receipt or past retention
        whose deletion a crash cut short, a temporary file a crash left half-written. Matched by
        name (each receipt's name is unique), so a folder moved with its files keeps them. Only
        the names the receiver itself gives (``<uid>.<12 hex>.dcm`` and their temporary files):
        the storage folder is a setting, other files in it are not the receiver's to delete."""
        known = {os.path.basename(p) for p in await self.outbox.call(_kept_paths)}
        leftovers = [entry.path for entry in os.scandir(self.storage)
                     if entry.is_file(follow_symlinks=False) and entry.name not in known
                     and _OWN_FILE.fullmatch(entry.name)]
        for path in leftovers:
            os.unlink(path)
        if leftovers:
            log.info("DICOM %s: %d file(s) no item refers to deleted", self.cfg.name, len(leftovers))

    # -- the SCP (runs in pynetdicom's threads) -------------------------------------------

    def _on_store(self, event) -> int:
        counters = self.stats.feed(self.cfg.feed)
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID)
        sop_class = str(req.AffectedSOPClassUID)
        if not sop_uid or "/" in sop_uid or sop_uid.startswith("."):
            counters.failed += 1
            return 0xC000 | 0x0001                # cannot understand: no usable SOP Instance UID
        path = None
        try:
            data = event.encoded_dataset()
            # one file per receipt: a confirmed earlier copy may still be waiting for its purge
            path = _write_durably(self.storage, f"{sop_uid}.{uuid.uuid4().hex[:12]}.dcm", data)
            replaced = self.outbox.call_sync(_record, self.cfg.name, sop_uid, sop_class, str(path),
                                             str(event.assoc.requestor.ae_title))
            if replaced:
                Path(replaced).unlink(missing_ok=True)
        except (OSError, ob.OutboxError) as exc:
            if path is not None:
                path.unlink(missing_ok=True)      # not recorded: the sender will send it again
            counters.failed += 1
            log.error("DICOM %s: instance not stored (%s): answering Out of Resources", self.cfg.name,
                      type(exc).__name__)
            return OUT_OF_RESOURCES
        counters.received += 1
        self._wake.set()
        return SUCCESS

    # -- the forwarder ---------------------------------------------------------------------

    async def _forward_loop(self) -> None:
        backoff = Backoff(self.site.forwarder.backoff_initial_s, self.site.forwarder.backoff_max_s)
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self._forward_batch(backoff)
            except Exception:  # noqa: BLE001 - a bug or a broken outbox must not stop forwarding for good
                log.exception("DICOM %s: unexpected error while forwarding; retrying", self.cfg.name)
                await self._pause(backoff.next_delay())

    async def _forward_batch(self, backoff: Backoff) -> None:
        batch = await self.outbox.call(_pending, self.cfg.name, 50)
        if not batch:
            await self._pause(1.0, wakeable=True)
            return
        settlement = _Settlement(self)
        try:
            try:
                if self.cfg.forward == "stow-rs":
                    await self._send_stow(batch, settlement)
                else:
                    await asyncio.to_thread(self._send_c_store, batch, settlement)
            finally:
                await asyncio.to_thread(settlement.wait)
        except _Retry as exc:
            rest = [b[0] for b in batch if b[0] not in settlement.settled]
            await self.outbox.call(_failed, rest, str(exc)[:500])
            delay = backoff.next_delay()
            log.warning("DICOM %s: %d instance(s) not forwarded (%s); retry in %.1fs", self.cfg.name, len(rest), exc,
                        delay)
            await self._pause(delay)
            return
        backoff.reset()
        if len(settlement.settled) < len(batch):
            await self._pause(backoff.next_delay())      # the rest hit a transient failure

    async def _pause(self, seconds: float, wakeable: bool = False) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and time.monotonic() < deadline:
            if wakeable and self._wake.is_set():
                return
            try:
                await asyncio.wait_for(self._stopping.wait(), 0.05 if wakeable else deadline - time.monotonic())
            except asyncio.TimeoutError:
                pass

    def _send_c_store(self, batch: list[tuple], settlement: "_Settlement") -> None:
        from pydicom.errors import InvalidDicomError
        from pydicom.filereader import read_file_meta_info
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.cfg.ae_title)
        ae.dimse_timeout = self.cfg.dimse_timeout_s
        contexts: dict[str, set[str]] = {}
        sendable = []
        for item_id, _sop, sop_class, path in batch:
            try:
                ts = str(read_file_meta_info(path).TransferSyntaxUID)
            except Exception as exc:  # noqa: BLE001 - the kept file is unreadable: nothing will fix it
                settlement.dead(item_id, path, f"kept file unreadable: {exc}")
                continue
            contexts.setdefault(sop_class, set()).add(ts)
            sendable.append((item_id, sop_class, path))
        if not contexts:
            return
        for sop_class, syntaxes in list(contexts.items())[:128]:
            ae.add_requested_context(sop_class, sorted(syntaxes))
        assoc = ae.associate(self.cfg.hub_host, self.cfg.hub_port, ae_title=self.cfg.hub_ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, _on_conn_open)])
        if not assoc.is_established:
            raise _Retry(f"association with {self.cfg.hub_ae_title}@{self.cfg.hub_host}:{self.cfg.hub_port} "
                         f"{'rejected' if assoc.is_rejected else 'not established'}")
        try:
            for item_id, sop_class, path in sendable:
                if sop_class not in contexts:
                    continue                     # over 128 SOP classes in one batch: next round
                if not assoc.is_established:
                    raise _Retry("association aborted by the hub")
                try:
                    status = assoc.send_c_store(path)
                except RuntimeError as exc:
                    # the hub aborted the association between the check above and the send
                    raise _Retry("association aborted by the hub") from exc
                except ValueError as exc:        # the hub accepted no presentation context for it
                    settlement.dead(item_id, path, f"not sent: {exc}")
                    continue
                except (OSError, InvalidDicomError, AttributeError) as exc:
                    # the kept file is unreadable, not a DICOM file or lacks its file meta (any other
                    # error is not the file's fault: the forward loop retries the batch later)
                    settlement.dead(item_id, path, f"kept file unreadable: {type(exc).__name__}")
                    continue
                if not assoc.is_established and not status:
                    raise _Retry("association aborted during C-STORE")
                code = int(status.Status) if status and "Status" in status else None
                if code is None:
                    raise _Retry("no C-STORE response")
                if code == SUCCESS or code in _WARNINGS:
                    settlement.delivered(item_id, path)
                elif (code & 0xFF00) == 0xA700:
                    break                        # out of resources at the hub: later
                else:
                    settlement.dead(item_id, path, f"hub answered C-STORE status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()

    async def _send_stow(self, batch: list[tuple], settlement: "_Settlement") -> None:
        if self._stow is None:
            verify: str | bool = str(self.site.hub.ca_file) if self.site.hub.ca_file else True
            self._stow = HubClient(self.site.hub.url, self.site.hub.client_id, self.site.hub.secret(),
                                   self.site.organization, timeout_s=self.site.hub.timeout_s, verify=verify)
        url = self.cfg.stow_url or f"{self.site.hub.url}/dicom-web/studies"
        for item_id, _sop, _cls, path in batch:
            try:
                data = await asyncio.to_thread(Path(path).read_bytes)
            except OSError as exc:
                settlement.dead(item_id, path, f"kept file unreadable: {type(exc).__name__}")
                continue
            boundary = uuid.uuid4().hex
            body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + data + \
                f"\r\n--{boundary}--\r\n".encode()
            headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                       "Accept": "application/dicom+json"}
            try:
                resp = await self._stow.post_raw(url, body, headers, scope=self.cfg.stow_scope)
            except HubUnavailable as exc:
                raise _Retry(f"STOW-RS: {exc}") from exc
            failure = _stow_failure(resp)
            if resp.status_code in (200, 202) and failure is None:
                settlement.delivered(item_id, path)
            elif resp.status_code in (400, 409, 415, 202) and not (failure is not None
                                                                  and (failure & 0xFF00) == 0xA700):
                reason = f"0x{failure:04X}" if failure is not None else resp.text[:300]
                settlement.dead(item_id, path, f"STOW-RS answered {resp.status_code}: failure reason {reason}")
            else:
                # 0xA7xx (out of resources), 401/403 (credentials), 429, 5xx: again later
                if settlement.settled:
                    break
                raise _Retry(f"STOW-RS answered {resp.status_code}")


class _Settlement:
    """The outcomes of one batch, each queued for the outbox's next group commit as the hub's
    response to it arrives (not waited for one by one): when the association or the connection
    fails later in the batch, or the process dies, the instances the hub already confirmed are
    not sent again."""

    def __init__(self, receiver: DicomReceiver):
        self.outbox, self.cfg = receiver.outbox, receiver.cfg
        self.counters = receiver.stats.feed(receiver.cfg.feed)
        self.settled: set[str] = set()
        self._commits: list = []

    def delivered(self, item_id: str, path: str) -> None:
        self._commits.append(self.outbox.submit(_delivered, item_id, path, time.time(), reserved=True))
        self.settled.add(item_id)
        self.counters.forwarded += 1

    def dead(self, item_id: str, path: str, reason: str) -> None:
        self._commits.append(self.outbox.submit(_dead, item_id, path, reason, self.cfg.feed, time.time(),
                                                reserved=True))
        self.settled.add(item_id)
        self.counters.failed += 1
        log.error("DICOM %s: item %s dead-lettered: %s", self.cfg.name, item_id, reason)

    def wait(self) -> None:
        """Until every outcome recorded so far is committed."""
        for commit in self._commits:
            commit()


def _on_conn_open(event) -> None:
    """EVT_CONN_OPEN of every association, received or opened to the hub: TCP_NODELAY (a C-STORE
    goes out as several writes, and with Nagle's algorithm each after the first waits for the
    peer's delayed ACK, about 40 ms), and the event-driven loops of :mod:`adapters.dicom.reactor`
    (pynetdicom 3.0's own reactor can take a fast C-STORE response away from the waiting
    ``send_c_store``, which then waits out the DIMSE timeout: the batch is aborted and retried)."""
    from adapters.dicom import reactor

    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reactor.install(event.assoc)


def _stow_failure(resp) -> int | None:
    """The first Failure Reason (0008,1197) of the Failed SOP Sequence (0008,1198), PS3.18 10.5.3."""
    if b"00081198" not in resp.content:
        return None
    try:
        failed = resp.json()["00081198"]["Value"]
        return int(failed[0]["00081197"]["Value"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return 0xC000


class _Retry(Exception):
    """The batch could not be forwarded now; try again after a backoff."""
