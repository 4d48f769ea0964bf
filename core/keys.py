"""API keys: made, stored hashed, revoked, and looked up.

Keys are 32 random bytes, so a plain SHA-256 is a sound hash for them (a slow password hash
protects guessable secrets; these are not guessable) and lets a lookup be one indexed query."""

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.tables import ApiKey, utcnow

KEY_PREFIX = "glk_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, owner: str) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key in clear (shown once)."""
    key = generate_key()
    row = ApiKey(name=name, owner=owner, prefix=key[:12], key_hash=hash_key(key))
    session.add(row)
    session.commit()
    return row, key


def revoke_key(session: Session, key_id_or_prefix: str) -> int:
    rows = session.scalars(
        select(ApiKey).where(
            (ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix),
            ApiKey.revoked_at.is_(None),
        )
    ).all()
    for row in rows:
        row.revoked_at = utcnow()
    session.commit()
    return len(rows)


def owner_for_key(session: Session, digest: str) -> str | None:
    """The owner of the key with this hash; None when unknown or revoked."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    return row.owner if row is not None and row.revoked_at is None else None
