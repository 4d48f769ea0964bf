"""The migrations build exactly the tables core/tables.py declares, on both databases, and
undo cleanly."""

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect

from core.db import make_engine
from core.migrate import ROOT


def config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


def test_models_match_migrations(backend) -> None:
    # `backend`'s database was migrated to head by the fixtures; check finds no difference.
    command.check(config(backend.database_url))


def test_downgrade_to_base_and_back(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/m.sqlite"
    cfg = config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    command.upgrade(cfg, "head")
