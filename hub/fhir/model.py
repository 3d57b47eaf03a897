"""Small value types shared by the FHIR store, search and the HTTP layer."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def now_us() -> int:
    return time.time_ns() // 1000


def instant(us: int) -> str:
    """FHIR instant (UTC, microseconds) for a stored time."""
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def http_date(us: int) -> str:
    """RFC 9110 date for Last-Modified."""
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def dumps(obj) -> bytes:
    return orjson.dumps(obj)


def loads(data: str | bytes):
    return orjson.loads(data)


@dataclass(slots=True)
class Stored:
    """One stored version of a resource. ``content`` is its JSON text as stored (None if deleted)."""

    res_type: str
    res_id: str
    version: int
    last_updated: int
    deleted: bool
    content: str | None
    method: str | None = None
    # the resource's integer key (hub.storage.schema), where the read had it at hand; not part
    # of what is served
    res_pk: int | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def location(self) -> str:
        return f"{self.res_type}/{self.res_id}/_history/{self.version}"

    def resource(self) -> dict:
        return orjson.loads(self.content) if self.content else {}

    def fragment(self) -> orjson.Fragment:
        """The stored JSON, embeddable in a larger document without parsing it."""
        return orjson.Fragment(self.content)
