"""The experiment statuses, in one place. Every status change is made in core/lifecycle.py."""

from typing import Literal, get_args

StatusName = Literal["queued", "running", "succeeded", "diverged", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(StatusName)
ACTIVE = frozenset({"queued", "running"})
TERMINAL = frozenset({"succeeded", "diverged", "failed", "cancelled"})


def is_terminal(status: str) -> bool:
    return status in TERMINAL
