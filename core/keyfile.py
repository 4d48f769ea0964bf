"""Small private files (mode 0600) that several processes may create at once: the embedded
default's API key and the webhook signing secret. Written whole to a temporary file beside
the target, then moved into place, so no reader ever sees an empty or partial file, even when
the writer crashes midway."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def write_private(path: Path, text: str, *, replace: bool) -> bool:
    """Store `text` (plus a newline) in `path`, mode 0600. `replace`: overwrite whatever is
    there. Otherwise create only: False, and the file left as it is, when `path` exists (of
    several processes racing, exactly one wins and the others read its file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if path exists
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class SecretError(RuntimeError):
    """A stored secret that cannot be used."""


def stored_secret(path: Path, min_len: int = 16) -> str:
    """The secret kept in `path`, made on first use (racing processes agree on one: see
    `write_private`). A file holding fewer than `min_len` characters (emptied, truncated) is
    refused: an empty HMAC key lets anyone forge a signature."""
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32), replace=False)
    text = path.read_text().strip()
    if len(text) < min_len:
        raise SecretError(
            f"{path} holds {len(text)} bytes, a secret needs at least {min_len}: "
            "set the setting, or delete the file and a new secret is made"
        )
    return text
