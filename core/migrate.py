"""Apply the Alembic migrations to a database: `python -m core.migrate` (the URL from
DATABASE_URL), or `upgrade(url)` from code (tests, benchmarks, the embedded launcher)."""

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[1]


def upgrade(url: str | None = None) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if url is not None:
        cfg.attributes["url"] = url
        cfg.attributes["configure_logger"] = False  # leave the caller's logging alone
    command.upgrade(cfg, "head")


if __name__ == "__main__":
    upgrade()
