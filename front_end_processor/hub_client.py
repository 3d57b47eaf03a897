"""The hub's ingest HTTP API, as the front-end processor calls it.

Contract (the hub's ``/ingest`` routes): ``POST /ingest/messages`` with a batch of items, each with
its own id (idempotent: the hub answers an id it has seen with its first result);
``POST /ingest/heartbeat``; tokens from ``POST /oauth2/token`` (OAuth2 client credentials,
RFC 6749 section 4.4, client authenticated with HTTP Basic, section 2.3.1), refreshed before
they expire.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Sequence

import httpx

from .outbox import PendingItem

log = logging.getLogger(__name__)

INGEST_SCOPE = "yilian/ingest"


class HubUnavailable(Exception):
    """The request may or may not have reached the hub; send it again later (same ids)."""


class HubRefused(Exception):
    """The hub refused the whole request (400/413): nothing of it was stored."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def _outcome_text(resp: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome (or the start of the body) -- never payload data."""
    try:
        body = resp.json()
        issues = body.get("issue") or []
        text = "; ".join(i.get("diagnostics") or i.get("code", "") for i in issues if isinstance(i, dict))
        return text or str(body.get("error") or "")[:300]
    except ValueError:
        return resp.text[:300]


class HubClient:
    """One HTTP/1.1 connection pool to the hub, with a cached bearer token."""

    def __init__(self, url: str, client_id: str, secret: str, organization: str, *, timeout_s: float = 30.0,
                 verify: str | bool = True, wait: bool = True):
        self.url = url.rstrip("/")
        self.client_id = client_id
        self._secret = secret
        self.organization = organization
        self.wait = wait
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)), verify=verify,
                                       limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
        self._tokens: dict[str, tuple[str, float]] = {}     # scope -> (token, refresh at)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _bearer(self, scope: str = INGEST_SCOPE) -> str:
        cached = self._tokens.get(scope)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        try:
            resp = await self._http.post(f"{self.url}/oauth2/token",
                                         data={"grant_type": "client_credentials", "scope": scope},
                                         auth=(self.client_id, self._secret))
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise HubUnavailable(f"token endpoint answered {resp.status_code} {_outcome_text(resp)}")
        body = resp.json()
        lifetime = float(body.get("expires_in") or 300)
        # refresh at 80% of the lifetime so a token never expires in the middle of a request
        self._tokens[scope] = (body["access_token"], time.monotonic() + lifetime * 0.8)
        return body["access_token"]

    async def _post(self, path: str, payload: dict) -> httpx.Response:
        return await self.post_raw(f"{self.url}{path}", None, {}, json=payload)

    async def post_raw(self, url: str, content: bytes | None, headers: dict, *, scope: str = INGEST_SCOPE,
                       json: dict | None = None) -> httpx.Response:
        """POST with a bearer token for ``scope``; a 401 gets one retry with a fresh token
        (revoked token, rotated signing key). Transport errors raise HubUnavailable."""
        for attempt in (1, 2):
            token = await self._bearer(scope)
            try:
                resp = await self._http.post(url, content=content, json=json,
                                             headers={**headers, "Authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                raise HubUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code == 401 and attempt == 1:
                self._tokens.pop(scope, None)
                continue
            return resp
        return resp

    async def send(self, items: Sequence[PendingItem]) -> list[dict]:
        """POST the batch; returns the hub's per-item results in the same order."""
        body = {"organization": self.organization, "wait": self.wait, "messages": [
            {"id": it.id, "kind": it.kind, "feed": it.feed, "received_at": it.received_at, "charset": it.charset,
             "filename": it.filename, "payload": base64.b64encode(it.payload).decode("ascii")} for it in items]}
        resp = await self._post("/ingest/messages", body)
        if resp.status_code == 200:
            try:
                results = resp.json()["results"]
            except (ValueError, KeyError, TypeError) as exc:
                raise HubUnavailable("ingest answered 200 without results") from exc
            if len(results) != len(items) or any(r.get("id") != it.id for r, it in zip(results, items)):
                raise HubUnavailable("ingest results do not match the batch")
            return results
        if resp.status_code in (400, 413):
            raise HubRefused(resp.status_code, _outcome_text(resp))
        # 401/403 (credentials or organization misconfigured), 429, 5xx: keep the items, retry later
        raise HubUnavailable(f"ingest answered {resp.status_code} {_outcome_text(resp)}")

    async def heartbeat(self, status: dict) -> None:
        resp = await self._post("/ingest/heartbeat", status)
        if resp.status_code not in (200, 204):
            raise HubUnavailable(f"heartbeat answered {resp.status_code} {_outcome_text(resp)}")
