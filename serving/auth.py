"""API keys: created once, stored hashed, each with a role and optionally scoped to accounts.

Keys are 256-bit random tokens, so a plain SHA-256 of the key is a safe verifier (a slow
password hash defends guessable secrets, which these are not) and lets a request be checked
with one indexed look-up.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim.serving.store import tables as t

PREFIX = "rk_"


class Role(StrEnum):
    SCHEDULER = "scheduler"  # asks for decisions, reads payments
    ANALYST = "analyst"  # reads payments and configuration
    ADMIN = "admin"  # everything, including configuration


class Unauthorized(PermissionError):
    """No key, or not a valid one."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its role, and the accounts it may see (None: all)."""

    key_id: str
    role: Role
    accounts: frozenset[str] | None

    def sees(self, account_id: str) -> bool:
        return self.accounts is None or account_id in self.accounts


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    engine: Engine, role: Role | str, accounts: list[str] | None = None
) -> tuple[str, str]:
    """Store a new key; returns ``(key_id, key)``. The key itself is never stored."""
    role = Role(role)
    key_id = f"key_{secrets.token_hex(6)}"
    key = PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            t.api_keys.insert().values(
                key_id=key_id,
                key_hash=_hash(key),
                role=role.value,
                accounts=json.dumps(sorted(accounts)) if accounts else None,
                created_at=datetime.now(UTC),
            )
        )
    return key_id, key


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as an operator sees it (never the key itself)."""

    key_id: str
    role: str
    accounts: list[str] | None
    created_at: datetime
    revoked_at: datetime | None


def list_keys(engine: Engine) -> list[KeyInfo]:
    """Every stored key, oldest first, revoked ones included."""
    k = t.api_keys.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(k.key_id, k.role, k.accounts, k.created_at, k.revoked_at).order_by(
                k.created_at, k.key_id
            )
        ).all()
    return [
        KeyInfo(
            r.key_id, r.role, json.loads(r.accounts) if r.accounts else None, r.created_at,
            r.revoked_at,
        )
        for r in rows
    ]  # fmt: skip


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Revoke a key by its id (at once in the store; API processes stop accepting it within
    their key cache's time). False if no such key is stored or it was already revoked."""
    k = t.api_keys.c
    with engine.begin() as conn:
        return bool(
            conn.execute(
                sa.update(t.api_keys)
                .where(k.key_id == key_id, k.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            ).rowcount
        )


class KeyCache:
    """Principals of recently seen keys, for ``ttl`` seconds: a request's key check without
    a database read. A key revoked in the store stops working within ``ttl``
    (``RECLAIM_AUTH_CACHE_SECONDS``; 0 checks the store every time). Unknown keys are never
    cached."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._seen: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            hit = self._seen.get(_hash(key))
        if hit is None or time.monotonic() - hit[0] > self.ttl:
            return None
        return hit[1]

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._seen) > 10_000:  # bounded: drop everything, re-read as needed
                self._seen.clear()
            self._seen[_hash(key)] = (time.monotonic(), principal)


def principal_of(engine: Engine, key_id: str) -> Principal | None:
    """The principal of a stored, unrevoked key by its id (a dashboard session names its key
    this way: revoking the key ends its sessions), or None."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.key_id == key_id)).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    accounts = frozenset(json.loads(row.accounts)) if row.accounts else None
    return Principal(row.key_id, Role(row.role), accounts)


def authenticate(engine: Engine, key: str | None) -> Principal:
    """The principal of a presented key, or :class:`Unauthorized`."""
    if not key or not key.startswith(PREFIX):
        raise Unauthorized("missing or malformed API key")
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(t.api_keys).where(t.api_keys.c.key_hash == _hash(key))
        ).one_or_none()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("unknown or revoked API key")
    accounts = frozenset(json.loads(row.accounts)) if row.accounts else None
    return Principal(row.key_id, Role(row.role), accounts)
