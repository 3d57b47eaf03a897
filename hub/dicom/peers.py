"""Known application entities (PS3.8 7.1.1: AE titles, hosts, ports) from the settings and the
``dicom_aes`` table, used to check callers and to resolve C-MOVE destinations (PS3.4 C.4.2.1.4)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select

from hub.dicom.schema import dicom_aes
from hub.storage.db import write_tx


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    org: str | None = None


def parse_peer(title: str, spec: str) -> Peer:
    """``"host:port"`` or ``"host:port@org"`` (the organization whose images the peer sends)."""
    addr, _, org = spec.partition("@")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"DICOM peer {title!r}: {spec!r} is not host:port[@org]")
    return Peer(title.strip(), host, int(port), org or None)


class PeerRegistry:
    """Peers by AE title; the table is re-read at most every ``ttl`` seconds, so an AE added
    with the CLI is known to a running hub shortly after."""

    def __init__(self, engine: Engine, configured: dict[str, str], ttl: float = 5.0):
        self.engine = engine
        self.configured = {t.strip(): parse_peer(t, s) for t, s in configured.items()}
        self.ttl = ttl
        self._loaded = 0.0
        self._peers: dict[str, Peer] = dict(self.configured)
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        if time.monotonic() - self._loaded < self.ttl:
            return
        with self._lock:
            with self.engine.connect() as conn:
                rows = conn.execute(select(dicom_aes)).all()
            peers = {r.ae_title: Peer(r.ae_title, r.host, r.port, r.org) for r in rows}
            peers.update(self.configured)  # the settings win over the table
            self._peers = peers
            self._loaded = time.monotonic()

    def get(self, ae_title: str) -> Peer | None:
        self._refresh()
        return self._peers.get(ae_title.strip())

    def all(self) -> list[Peer]:
        self._refresh()
        return sorted(self._peers.values(), key=lambda p: p.ae_title)

    def add(self, peer: Peer, description: str | None = None) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(dicom_aes.delete().where(dicom_aes.c.ae_title == peer.ae_title))
            conn.execute(dicom_aes.insert().values(ae_title=peer.ae_title, host=peer.host, port=peer.port,
                                                   org=peer.org, description=description))
        self._loaded = 0.0

    def remove(self, ae_title: str) -> bool:
        with write_tx(self.engine) as conn:
            n = conn.execute(dicom_aes.delete().where(dicom_aes.c.ae_title == ae_title)).rowcount
        self._loaded = 0.0
        return bool(n)
