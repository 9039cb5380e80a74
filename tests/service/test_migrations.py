"""Alembic is the only schema source: upgrade on an empty database matches the models; downgrade works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.orm import Base

from .helpers import REPO_ROOT, throwaway_database


def _config(url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    with throwaway_database("leap_migrations") as url:
        yield url


def _check_round_trip(url: str) -> None:
    config = _config(url)
    command.upgrade(config, "head")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        assert set(inspect(engine).get_table_names()) >= {
            "tenants",
            "api_keys",
            "trainings",
            "artifacts",
            "outbox_messages",
        }
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_postgres_upgrade_matches_models_and_downgrades(empty_postgres):
    _check_round_trip(empty_postgres)


def test_sqlite_upgrade_matches_models_and_downgrades(tmp_path):
    _check_round_trip(f"sqlite:///{tmp_path / 'leap.db'}")
