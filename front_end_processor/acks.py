"""Receivers waiting (briefly) for the hub's application ACK of an item they stored."""

from __future__ import annotations

import asyncio
import base64


class AckWaiters:
    def __init__(self):
        self._waiting: dict[str, asyncio.Future] = {}

    def register(self, item_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiting[item_id] = fut
        return fut

    def discard(self, item_id: str) -> None:
        self._waiting.pop(item_id, None)

    async def wait(self, item_id: str, fut: asyncio.Future, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiting.pop(item_id, None)

    def delivered(self, item_id: str, result: dict) -> None:
        """Called by the forwarder with the hub's result for an item."""
        fut = self._waiting.get(item_id)
        if fut is not None and not fut.done():
            ack = result.get("ack")
            fut.set_result(base64.b64decode(ack) if ack else None)
