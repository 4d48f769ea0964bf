"""Cursors for lists newest first: an opaque (created_at, id) of the last row of a page."""

import base64
import binascii
from datetime import datetime
from typing import Any

from core.errors import Problem, field_error
from core.tables import as_utc


def encode_cursor(row: Any) -> str:
    """The cursor after `row` (anything with `created_at` and `id`)."""
    return base64.urlsafe_b64encode(
        f"{as_utc(row.created_at).isoformat()}|{row.id}".encode()
    ).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        if "\x00" in row_id:  # not one of ours, and PostgreSQL cannot compare it
            raise ValueError("NUL in the cursor")
        return datetime.fromisoformat(created), row_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(
            400,
            "Bad cursor",
            "the cursor is not one this API issued",
            "cursor",
            errors=[field_error("cursor", "invalid", "value")],
        ) from exc
