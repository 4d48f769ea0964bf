"""gradlab for its users: `gradlab.Client` (the HTTP client), the `gradlab` command line, and
(with `pip install gradlab[watch]`, which brings torch) `gradlab.watch` for a training loop of
one's own. Importing `gradlab` needs httpx only: torch is imported on the first `watch`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradlab.client import ApiError, Client, UnsafeArchive, default_key, default_url

if TYPE_CHECKING:
    from gradlab.watcher import Run


def watch(model: Any, **options: Any) -> Run:
    """Watch the nn.RNN / nn.LSTM / nn.GRU modules inside `model` in your own training loop and
    send the service's instruments to it as an external run: `run.log(loss=...)` each step,
    `run.finish()` (or `with gradlab.watch(model) as run:`) at the end. Options: `name`,
    `every` (10), `url`, `key`, `tags`, `config`, `total_steps`, `notify`; see
    gradlab/watcher.py for what is measured and how uploads survive an outage."""
    from gradlab.watcher import Run

    return Run(model, **options)


__all__ = ["ApiError", "Client", "UnsafeArchive", "default_key", "default_url", "watch"]
