"""Alembic is the only schema source: upgrade on an empty database matches the models; downgrade works."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.orm import Base

from .conftest import PG_ADMIN_DSN, REPO_ROOT


def _config(url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    name = f"leap_migrations_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
