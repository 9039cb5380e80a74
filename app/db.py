"""Engine, session factory, the unit of work (one owner per transaction) and the request dependency."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import Engine, Select, create_engine, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.errors import ServiceUnavailable
from app.settings import Settings

logger = logging.getLogger(__name__)

_AFTER_COMMIT = "leap_after_commit"
_AFTER_ROLLBACK = "leap_after_rollback"
_Row = TypeVar("_Row")
_Result = TypeVar("_Result")


def lock_by_id(session: Session, model: type[_Row], row_id: Any) -> _Row | None:
    """The row with this primary key, locked for update; None when missing or another worker holds it."""
    query = (
        select(model)
        .where(model.id == row_id)  # type: ignore[attr-defined]
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).one_or_none()


def lock_due(session: Session, model: type[_Row], *, status: str, due_before: Any, limit: int) -> list[_Row]:
    """Rows in `status` whose next_attempt_at is at or before `due_before`, oldest first, locked for
    update; rows another worker holds are skipped (they are being worked on)."""
    query = (
        select(model)
        .where(model.status == status, model.next_attempt_at <= due_before)  # type: ignore[attr-defined]
        .order_by(model.next_attempt_at)  # type: ignore[attr-defined]
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def insert_ignoring_conflict(
    session: Session, model: type[Any], values: dict[str, Any], *, index_elements: list[str], returning: Any
) -> Any | None:
    """INSERT ... ON CONFLICT (index_elements) DO NOTHING RETURNING `returning` (Postgres or SQLite);
    the returned value, or None when a conflicting row already existed (nothing written)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(model).values(**values).on_conflict_do_nothing(index_elements=index_elements)
    row = session.execute(statement.returning(returning)).first()
    return None if row is None else row[0]


@dataclass(frozen=True)
class Database:
    engine: Engine
    session_factory: sessionmaker[Session]
    read_session_factory: sessionmaker[Session]
    """Autocommit sessions for requests that only read (a poll): no BEGIN and COMMIT round trips.
    Each statement sees committed data; never write through them. Use them through `read`."""
    read_engine: Engine
    read_threads: ThreadPoolExecutor
    """Where the API runs reads (`read_in_thread`): no more threads than pooled read connections,
    so a burst of polls waits here, not in the pool's checkout timeout."""
    loop_reads: LoopReads | None = None
    """Reads on the event loop itself (Postgres only): the poll's one query, without a thread."""

    def dispose(self) -> None:
        self.read_threads.shutdown(wait=False)
        self.engine.dispose()
        self.read_engine.dispose()


def create_database(settings: Settings) -> Database:
    """Build the engine for LEAP_DATABASE_URL (SQLite in the data folder by default)."""
    url = settings.resolved_database_url
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs.update(
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_pool_size,
            pool_pre_ping=True,
            pool_recycle=1800,
        )
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
        read_engine: Engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    else:
        # Reads (every poll) get a pool of their own, autocommit from the start: no isolation
        # level set and reset, no rollback on return and no pre-ping per checkout, each a round
        # trip or its price in CPU. A connection that died meanwhile fails its read, which `read`
        # then runs once more on a fresh one.
        kwargs.update(pool_pre_ping=False, isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
        read_engine = create_engine(url, **kwargs)
    loop_reads = None
    if engine.dialect.driver == "psycopg":
        _, connect_kwargs = engine.dialect.create_connect_args(engine.url)
        size = settings.database_pool_size
        loop_reads = LoopReads(engine.dialect, dict(connect_kwargs), size=size, recycle_seconds=1800)
    return Database(
        engine=engine,
        session_factory=sessionmaker(engine, expire_on_commit=False),
        read_session_factory=sessionmaker(read_engine),
        read_engine=read_engine,
        read_threads=ThreadPoolExecutor(max_workers=settings.database_pool_size, thread_name_prefix="leap-read"),
        loop_reads=loop_reads,
    )


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # The API, the workers and beat share one file: WAL lets readers run beside the writer.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the unit of work owning `session` has committed (dropped on rollback)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def on_rollback(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` if the unit of work owning `session` rolls back (e.g. delete uploaded files)."""
    session.info.setdefault(_AFTER_ROLLBACK, []).append(callback)


def _run_hooks(session: Session, key: str) -> None:
    callbacks = session.info.pop(key, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("%s hook failed", key)


def _commit(session: Session) -> None:
    try:
        session.commit()
    except BaseException:
        _rollback(session)
        raise
    session.info.pop(_AFTER_ROLLBACK, None)
    _run_hooks(session, _AFTER_COMMIT)
    session.close()


def _rollback(session: Session) -> None:
    try:
        session.rollback()
        session.info.pop(_AFTER_COMMIT, None)
        _run_hooks(session, _AFTER_ROLLBACK)
    finally:
        session.close()


@contextmanager
def unit_of_work(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error; then its hooks run."""
    session = session_factory()
    try:
        yield session
    except BaseException:
        _rollback(session)
        raise
    _commit(session)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's unit of work; use with Depends(..., scope="function") so it commits before the
    response is sent. Async so that opening it costs no thread hop; the blocking commit or
    rollback runs in the thread pool."""
    session = request.app.state.database.session_factory()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(_rollback, session)
        raise
    await run_in_threadpool(_commit, session)


@contextmanager
def read_only(database: Database) -> Iterator[Session]:
    """A short autocommit session for reads; closed (and its connection returned) afterwards."""
    session = database.read_session_factory()
    try:
        yield session
    finally:
        session.close()


def read(database: Database, work: Callable[[Session], _Result]) -> _Result:
    """`work` on a read_only session; run again, once, when its connection turned out to be dead
    (the database restarted or closed it): read connections are not pinged before use."""
    try:
        with read_only(database) as session:
            return work(session)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        logger.info("a read connection was dead; reading again on a fresh one")
    with read_only(database) as session:
        return work(session)


async def read_in_thread(database: Database, work: Callable[[Session], _Result]) -> _Result:
    """`read(database, work)` from the event loop, on the database's read threads: one hop for the
    whole request (authentication, query, serialisation), cheaper than anyio's per-call thread hop."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(database.read_threads, context.run, read, database, work)


@dataclass
class DriverStatement:
    """A Core select compiled once for the driver: its SQL, its fixed parameters, its column names,
    and the columns' result processors (found from the first result's column types, then kept)."""

    sql: str
    fixed: dict[str, Any]
    names: tuple[str, ...]
    types: tuple[Any, ...]
    processors: tuple[Callable[[Any], Any] | None, ...] | None = None

    @classmethod
    def compile(cls, statement: Select[Any], dialect: Dialect) -> DriverStatement:
        compiled = statement.compile(dialect=dialect)
        columns = statement.selected_columns
        names = tuple(str(column.key) for column in columns)
        return cls(str(compiled), dict(compiled.params), names, tuple(column.type for column in columns))

    def learn_types(self, description: Any, dialect: Dialect) -> None:
        """Find the result processors from a result's column types (the DBAPI's description, whose
        columns psycopg builds anew each time it is read: so only once)."""
        self.processors = tuple(
            type_.dialect_impl(dialect).result_processor(dialect, column.type_code)
            for type_, column in zip(self.types, description, strict=True)
        )

    def row(self, values: tuple[Any, ...]) -> dict[str, Any]:
        assert self.processors is not None, "learn_types first"
        return {
            name: value if process is None or value is None else process(value)
            for name, value, process in zip(self.names, values, self.processors, strict=True)
        }


@dataclass
class _LoopConnections:
    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    idle: list[tuple[Any, float]]  # (psycopg.AsyncConnection, opened at)


class LoopReads:
    """Autocommit psycopg connections used on the event loop, for the poll's query: with no thread
    hop and no SQLAlchemy execution around it, the poll's read costs a third of the CPU.

    At most `size` connections per event loop (an API process has one); a read that waits
    `checkout_timeout` for one is answered 503. A connection is dropped
    when a read on it fails or is cancelled, and after `recycle_seconds`; a read that failed
    because its connection had died (the database restarted) runs once more on a new one."""

    def __init__(
        self,
        dialect: Dialect,
        connect_kwargs: dict[str, Any],
        *,
        size: int,
        recycle_seconds: float,
        checkout_timeout: float = 30.0,
    ) -> None:
        self.dialect = dialect
        self.connect_kwargs = connect_kwargs
        self.size = size
        self.recycle_seconds = recycle_seconds
        self.checkout_timeout = checkout_timeout  # as SQLAlchemy's pool_timeout; then 503
        self._state: _LoopConnections | None = None

    def _connections(self) -> _LoopConnections:
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            if state is not None:  # another loop's (a test client's): unusable here
                for connection, _ in state.idle:
                    connection.pgconn.finish()
            state = self._state = _LoopConnections(loop, asyncio.Semaphore(self.size), [])
        return state

    @property
    def idle_connections(self) -> int:
        return 0 if self._state is None else len(self._state.idle)

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(**self.connect_kwargs, autocommit=True)

    async def fetch_one(self, statement: DriverStatement, parameters: dict[str, Any]) -> dict[str, Any] | None:
        """The statement's first row as {column name: value}, None when there is none."""
        import psycopg

        state = self._connections()
        try:
            async with asyncio.timeout(self.checkout_timeout):
                await state.slots.acquire()
        except TimeoutError:
            raise ServiceUnavailable("every database connection of this API process is busy; retry later") from None
        try:
            for attempt in (1, 2):
                connection, opened = state.idle.pop() if state.idle else (await self._connect(), time.monotonic())
                try:
                    async with connection.cursor() as cursor:
                        await cursor.execute(statement.sql, {**statement.fixed, **parameters})
                        values = await cursor.fetchone()
                        if statement.processors is None:
                            statement.learn_types(cursor.description, self.dialect)
                except BaseException as error:
                    dead = connection.broken
                    connection.pgconn.finish()  # its state is unknown: never reuse it
                    if attempt == 1 and dead and isinstance(error, psycopg.OperationalError):
                        logger.info("a loop read connection was dead; reading again on a new one")
                        continue
                    raise
                if time.monotonic() - opened < self.recycle_seconds:
                    state.idle.append((connection, opened))
                else:
                    await connection.close()
                return None if values is None else statement.row(values)
        finally:
            state.slots.release()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        state, self._state = self._state, None
        for connection, _ in state.idle if state is not None else ():
            await connection.close()


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Run Alembic migrations (the only source of the schema) on LEAP_DATABASE_URL."""
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(config, revision)
