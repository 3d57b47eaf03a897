"""Forwarder: sends the outbox to the hub, lane by lane, oldest first, until the hub confirms.

Each lane sends one batch at a time and moves on only when the hub has answered for the whole
batch, so within a lane nothing overtakes an item that is still failing; one order key (a
patient's PID-3 identifier, a file) always maps to one lane, which gives per-patient order
while lanes run in parallel. Memory is one batch per lane whatever the backlog: batches are read
from the outbox page by page. Retries use exponential backoff with full jitter (capped).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

from . import outbox as ob
from .hub_client import HubClient, HubRefused, HubUnavailable
from .status import NodeStats

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with full jitter: a random delay in [d/2, d], d doubling up to a cap."""

    def __init__(self, initial: float, cap: float):
        self.initial, self.cap = initial, cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        d = min(self.cap, self.initial * 2 ** (self.failures - 1))
        return random.uniform(d / 2, d)

    def reset(self) -> None:
        self.failures = 0


class Forwarder:
    def __init__(self, outbox: ob.Outbox, hub: HubClient, stats: NodeStats, *, lanes: int, batch_size: int,
                 batch_bytes: int, backoff_initial_s: float, backoff_max_s: float, linger_s: float = 0.05,
                 on_delivered: Callable[[str, dict], None] | None = None):
        self.outbox = outbox
        self.hub = hub
        self.stats = stats
        self.lanes = lanes
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.linger_s = linger_s
        self.on_delivered = on_delivered
        self._wake = [asyncio.Event() for _ in range(lanes)]
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.last_error: str | None = None
        outbox.listeners.append(self.wake)

    def wake(self, lane: int) -> None:
        self._wake[lane].set()

    def start(self) -> None:
        for lane in range(self.lanes):
            self._wake[lane].set()     # look at what a previous run left pending
            self._tasks.append(asyncio.create_task(self._run_lane(lane), name=f"forward-lane-{lane}"))

    async def stop(self) -> None:
        """Let each lane finish the request it is in, then stop."""
        self._stopping.set()
        for ev in self._wake:
            ev.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _run_lane(self, lane: int) -> None:
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        wake = self._wake[lane]
        while not self._stopping.is_set():
            wake.clear()
            try:
                items = await self.outbox.call(ob.fetch_pending, lane, self.batch_size, self.batch_bytes)
            except ob.OutboxError as exc:
                log.error("lane %d: cannot read the outbox: %s", lane, exc)
                await self._sleep(backoff.next_delay())
                continue
            if not items:
                try:
                    await asyncio.wait_for(wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    continue
                # woken by a new item: let a batch gather (one request for many items costs the
                # hub and this node far less CPU than one request each; the ACK is not delayed)
                await self._sleep(self.linger_s)
                continue
            try:
                await self._deliver(items)
                backoff.reset()
            except HubUnavailable as exc:
                self.last_error = str(exc)
                delay = backoff.next_delay()
                log.warning("lane %d: %d item(s) not delivered (%s); retry in %.1fs", lane, len(items), exc, delay)
                try:
                    await self.outbox.call(ob.mark_attempt_failed, [i.id for i in items], str(exc)[:500])
                except ob.OutboxError:
                    pass
                await self._sleep(delay)
            except Exception:  # noqa: BLE001 - a bug must not stop forwarding for good
                log.exception("lane %d: unexpected error; retrying", lane)
                await self._sleep(backoff.next_delay())

    async def _deliver(self, items: list[ob.PendingItem]) -> None:
        """Send ``items``; a request the hub refuses as a whole is split until the culprit is alone,
        which is then dead-lettered (a poison item never blocks its lane)."""
        try:
            results = await self.hub.send(items)
        except HubRefused as exc:
            if len(items) > 1:
                half = len(items) // 2
                await self._deliver(items[:half])
                await self._deliver(items[half:])
                return
            reason = f"hub refused the item: {exc}"
            await self.outbox.call_reserved(ob.dead_letter, items[0].id, reason, time.time())
            self.stats.feed(items[0].feed).failed += 1
            log.error("item %s (feed %s) dead-lettered: %s", items[0].id, items[0].feed, reason)
            return
        try:
            dead = await self.outbox.call_reserved(ob.record_results, items, results, time.time())
        except ob.OutboxFull:
            log.warning("outbox full: confirmed items deleted at once (no retention) to make room")
            await self.outbox.call_reserved(ob.record_results, items, results, time.time(), True)
            dead = []
            kept = [(i, r) for i, r in zip(items, results) if not r.get("permanent")]
            items, results = [i for i, _ in kept], [r for _, r in kept]
        dead_set = set(dead)
        for item, res in zip(items, results):
            counters = self.stats.feed(item.feed)
            if item.id in dead_set:
                counters.failed += 1
                log.error("item %s (feed %s) rejected by the hub, dead-lettered: %s", item.id, item.feed,
                          res.get("error"))
            else:
                counters.forwarded += 1
            if self.on_delivered is not None:
                self.on_delivered(item.id, res)
