"""OAuth2 bearer tokens: issuing (client credentials) and verifying JWTs.

Algorithms are fixed by configuration per issuer, never read from the token header (RFC 8725
§3.1). Verified tokens are cached until they expire, so a busy client pays for one signature
check per token rather than per request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jwt
from sqlalchemy import Engine, select, update

from hub.errors import Unauthorized
from hub.security.scopes import Scope, narrow, parse_scopes
from hub.storage.db import write_tx
from hub.storage.schema import oauth_clients


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified token's subject, client, scopes and context."""

    subject: str
    client_id: str
    scopes: tuple[Scope, ...]
    scope_text: str
    organization: str | None = None
    patient: str | None = None  # launch context for patient/ scopes
    name: str | None = None
    expires: float = 0.0


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    audience: str
    algorithm: str
    key: str  # PEM public key (RS/ES/EdDSA) or shared secret (HS)


class TokenService:
    def __init__(self, *, issuer: str, audience: str, algorithm: str, secret: str, lifetime_s: int,
                 trusted: list[TrustedIssuer] | None = None):
        if algorithm not in ("HS256", "HS384", "HS512"):
            raise ValueError("the hub signs its own tokens with HS256/384/512")
        self.issuer, self.audience, self.algorithm, self.lifetime_s = issuer, audience, algorithm, lifetime_s
        self._secret = secret
        self._trusted = {t.iss: t for t in (trusted or [])}
        self._cache: dict[str, Principal] = {}
        self._lock = threading.Lock()

    @staticmethod
    def load_trusted(path: Path | None) -> list[TrustedIssuer]:
        if not path:
            return []
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return [TrustedIssuer(i["iss"], i["audience"], i["algorithm"], i["key"]) for i in data.get("issuer", [])]

    def issue(self, *, subject: str, client_id: str, scope: str, organization: str | None = None,
              patient: str | None = None, name: str | None = None, lifetime_s: int | None = None) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": subject, "client_id": client_id,
                  "scope": scope, "iat": now, "nbf": now - 5, "exp": now + (lifetime_s or self.lifetime_s),
                  "jti": secrets.token_hex(8)}
        if organization:
            claims["org"] = organization
        if patient:
            claims["patient"] = patient
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._secret, algorithm=self.algorithm)

    def verify(self, token: str) -> Principal:
        now = time.time()
        p = self._cache.get(token)
        if p is not None and p.expires > now:
            return p
        try:
            unverified_iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise Unauthorized("the bearer token is not a JWT") from None
        if unverified_iss == self.issuer:
            key, alg, aud = self._secret, self.algorithm, self.audience
        elif unverified_iss in self._trusted:
            t = self._trusted[unverified_iss]
            key, alg, aud = t.key, t.algorithm, t.audience
        else:
            raise Unauthorized("the token's issuer is not trusted")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=aud, issuer=unverified_iss,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the bearer token has expired") from None
        except jwt.PyJWTError as e:
            raise Unauthorized(f"the bearer token is not valid: {e}") from None
        scope_text = claims.get("scope") or ""
        p = Principal(subject=str(claims["sub"]), client_id=str(claims.get("client_id") or claims.get("azp") or ""),
                      scopes=parse_scopes(scope_text), scope_text=scope_text, organization=claims.get("org"),
                      patient=claims.get("patient"), name=claims.get("name"), expires=float(claims["exp"]))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
            self._cache[token] = p
        return p


# ----------------------------------------------------------------------------- client registry

def _hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def register_client(engine: Engine, client_id: str, scopes: str, *, organization: str | None = None,
                    description: str | None = None, secret: str | None = None) -> str:
    """Register (or re-key) a client; returns its secret, which is stored only as a scrypt hash."""
    secret = secret or secrets.token_urlsafe(32)
    salt = os.urandom(16)
    row = {"client_id": client_id, "secret_hash": _hash_secret(secret, salt), "secret_salt": salt,
           "scopes": scopes, "organization": organization, "description": description,
           "created": int(time.time() * 1_000_000), "disabled": False}
    with write_tx(engine) as conn:
        exists = conn.execute(select(oauth_clients.c.client_id).where(oauth_clients.c.client_id == client_id)).first()
        if exists:
            conn.execute(update(oauth_clients).where(oauth_clients.c.client_id == client_id).values(**row))
        else:
            conn.execute(oauth_clients.insert().values(**row))
    return secret


def list_clients(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(oauth_clients.c.client_id, oauth_clients.c.scopes, oauth_clients.c.organization,
                                   oauth_clients.c.description, oauth_clients.c.disabled)).all()
    return [dict(r._mapping) for r in rows]


def client_credentials(engine: Engine, tokens: TokenService, client_id: str, secret: str,
                       requested_scope: str | None) -> dict:
    """RFC 6749 §4.4 client credentials grant; returns the token response body."""
    with engine.connect() as conn:
        row = conn.execute(select(oauth_clients).where(oauth_clients.c.client_id == client_id)).first()
    if row is None or row.disabled or not hmac.compare_digest(_hash_secret(secret, row.secret_salt), row.secret_hash):
        raise Unauthorized("invalid client credentials")
    scope = narrow(requested_scope, row.scopes)
    token = tokens.issue(subject=client_id, client_id=client_id, scope=scope, organization=row.organization)
    return {"access_token": token, "token_type": "Bearer", "expires_in": tokens.lifetime_s, "scope": scope}
