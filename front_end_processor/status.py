"""In-process counters reported in heartbeats (since the process started) and by ``yilian fep status``."""

from __future__ import annotations

from collections import defaultdict


class FeedCounters:
    __slots__ = ("received", "forwarded", "failed", "rejected")

    def __init__(self):
        self.received = self.forwarded = self.failed = self.rejected = 0

    def as_dict(self) -> dict:
        return {"received": self.received, "forwarded": self.forwarded, "failed": self.failed,
                "rejected": self.rejected}


class NodeStats:
    """``failed`` counts items the front-end processor refused (unparseable, not storable) or the
    hub rejected permanently; items waiting for a retry are not failed, they are pending."""

    def __init__(self):
        self.feeds: dict[str, FeedCounters] = defaultdict(FeedCounters)
        self.receivers: dict[str, dict] = {}

    def feed(self, name: str) -> FeedCounters:
        return self.feeds[name]

    def feeds_dict(self) -> dict:
        return {name: c.as_dict() for name, c in sorted(self.feeds.items())}
