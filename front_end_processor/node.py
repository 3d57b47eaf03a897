"""One front-end processor process: receivers, outbox, forwarder, heartbeats, housekeeping.

Shutdown (SIGTERM/SIGINT): receivers stop accepting and finish the message in hand (stored and
acknowledged), the forwarder finishes the request it is in, then the outbox is checkpointed and
closed. SIGKILL loses nothing acknowledged: the outbox is committed before every ACK, and
unconfirmed items are sent again (same ids) on the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import time

from . import __version__
from . import outbox as ob
from .acks import AckWaiters
from .config import FepConfig
from .forwarder import Forwarder
from .hub_client import HubClient, HubUnavailable
from .mllp_receiver import MllpReceiver
from .status import NodeStats

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


class FepNode:
    def __init__(self, cfg: FepConfig):
        self.cfg = cfg
        self.stats = NodeStats()
        self.waiters = AckWaiters()
        self.started_at = time.time()
        self.outbox: ob.Outbox | None = None
        self.hub: HubClient | None = None
        self.forwarder: Forwarder | None = None
        self.receivers: list = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = ob.Outbox(cfg.outbox_path, lanes=cfg.forwarder.lanes, max_pages=cfg.outbox.max_pages)
        moved = await self.outbox.call_reserved(ob.assign_lanes, cfg.forwarder.lanes)
        if moved:
            log.info("%d pending item(s) moved to the lanes of %d lane(s)", moved, cfg.forwarder.lanes)
        verify: str | bool = str(cfg.hub.ca_file) if cfg.hub.ca_file else True
        self.hub = HubClient(cfg.hub.url, cfg.hub.client_id, cfg.hub.secret(), cfg.organization,
                             timeout_s=cfg.hub.timeout_s, verify=verify, wait=cfg.hub.wait)
        f = cfg.forwarder
        self.forwarder = Forwarder(self.outbox, self.hub, self.stats, lanes=f.lanes, batch_size=f.batch_size,
                                   batch_bytes=f.batch_bytes, backoff_initial_s=f.backoff_initial_s,
                                   backoff_max_s=f.backoff_max_s, linger_s=f.linger_s, on_delivered=self.waiters.delivered)
        for m in cfg.mllp:
            self.receivers.append(MllpReceiver(m, cfg, self.outbox, self.stats, self.waiters))
        if cfg.dicom:
            from .dicom_scp import DicomReceiver

            for d in cfg.dicom:
                self.receivers.append(DicomReceiver(d, cfg, self.outbox, self.stats))
        if cfg.file_drop:
            from .file_drop import FileDrop

            for fd in cfg.file_drop:
                self.receivers.append(FileDrop(fd, self.outbox, self.stats))
        for r in self.receivers:
            await r.start()
        self.forwarder.start()
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="heartbeats"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        log.info("front-end processor %s (%s) started: hub %s, outbox %s", cfg.node, cfg.organization, cfg.hub.url,
                 cfg.outbox_path)

    async def stop(self) -> None:
        log.info("front-end processor %s stopping", self.cfg.node)
        for r in self.receivers:
            await r.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.forwarder is not None:
            await self.forwarder.stop()
        if self.hub is not None:
            await self.hub.aclose()
        if self.outbox is not None:
            await asyncio.to_thread(self.outbox.close)
        log.info("front-end processor %s stopped; outbox closed", self.cfg.node)

    async def status(self) -> dict:
        now = time.time()
        box = await self.outbox.call(ob.stats, now)
        receivers = {}
        for r in self.receivers:
            receivers[r.cfg.name] = {"kind": type(r).__name__, "port": getattr(r, "port", None),
                                     "connections": getattr(r, "connections", 0)}
        try:
            disk_free = shutil.disk_usage(self.cfg.outbox_path.parent).free
        except OSError:
            disk_free = None
        return {"organization": self.cfg.organization, "node": self.cfg.node, "version": __version__,
                "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": ob.iso(self.started_at), "uptime_s": round(now - self.started_at, 1),
                "receivers": receivers, "feeds": self.stats.feeds_dict(),
                "outbox": {"depth": box["depth"], "oldest_pending_age_s": box["oldest_pending_age_s"]},
                "dead_letters": box["dead_letters"], "disk_free_bytes": disk_free,
                "last_forward_error": self.forwarder.last_error if self.forwarder else None,
                "sent_at": ob.iso(now)}

    async def _heartbeats(self) -> None:
        while True:
            try:
                status = await self.status()
                _write_status(self.cfg, status)
                await self.hub.heartbeat(status)
            except HubUnavailable as exc:
                log.debug("heartbeat not delivered: %s", exc)
            except ob.OutboxError as exc:
                log.warning("heartbeat: %s", exc)
            except Exception:  # noqa: BLE001 - heartbeats must keep going
                log.exception("heartbeat failed")
            await asyncio.sleep(self.cfg.heartbeat_s)

    async def _housekeeping(self) -> None:
        interval = min(60.0, max(1.0, self.cfg.outbox.retention_s / 10))
        while True:
            try:
                await self._purge(time.time() - self.cfg.outbox.retention_s)
            except (ob.OutboxError, OSError) as exc:
                log.warning("housekeeping: %s", exc)
            await asyncio.sleep(interval)

    async def _purge(self, cutoff: float) -> None:
        """Everything confirmed (or settled) before ``cutoff``, in bounded steps so the outbox
        writer is never held long, until none is left: a busy node confirms far more than one
        step a minute."""
        for what, purge in (("confirmed item(s)", ob.purge_delivered),
                            ("settled file record(s)", ob.purge_file_items)):
            total = 0
            while True:
                removed = await self.outbox.call_reserved(purge, cutoff)
                total += removed
                if removed < ob.PURGE_LIMIT:
                    break
            if total:
                log.info("removed %d %s past retention", total, what)
        if self.cfg.dicom:
            from .dicom_scp import expired_dicom, forget_dicom

            while rows := await self.outbox.call(expired_dicom, cutoff):
                await asyncio.to_thread(_unlink_all, [path for _id, path in rows])
                await self.outbox.call_reserved(forget_dicom, [item_id for item_id, _path in rows])


def _unlink_all(paths: list[str]) -> None:
    """Delete confirmed instances past retention. A file that cannot be deleted (permissions, an
    I/O error) must not stop the cleanup for good (its row would come first on every pass): its
    row is forgotten all the same and the start sweep deletes the orphan later. Logged by error
    class and count only: a kept file's name is a SOP Instance UID."""
    failed: dict[str, int] = {}
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
    if failed:
        log.warning("DICOM retention: %s file(s) past retention not deleted (%s); left for the start sweep",
                    sum(failed.values()), ", ".join(f"{k} x{v}" for k, v in sorted(failed.items())))


def _write_status(cfg: FepConfig, status: dict) -> None:
    """The latest status for ``yilian fep status`` (written atomically: temp file + rename)."""
    path = cfg.data_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1), "utf-8")
    os.replace(tmp, path)


async def serve(cfg: FepConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    node = FepNode(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    _write_status(cfg, await node.status())
    print(f"yilian-fep {cfg.node} ready: " + ", ".join(
        f"{r.cfg.name}={getattr(r, 'port', '-')}" for r in node.receivers), flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    await node.stop()
