"""gradlab for its users: `gradlab.Client` (the HTTP client), the `gradlab` command line, and
(with `pip install gradlab[watch]`, which brings torch) `gradlab.watch` for a training loop of
one's own. Importing `gradlab` needs httpx only."""

from gradlab.client import ApiError, Client, UnsafeArchive, default_key, default_url

__all__ = ["ApiError", "Client", "UnsafeArchive", "default_key", "default_url"]
