"""The `leap` command: serve, api, worker, migrate, demo, train, the client commands (submit, status,
list, cancel, download) and admin tenants/keys."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app import __version__
from app.ids import uuid_or_none
from app.parent_watch import PARENT_PID_ENV, exit_with_parent
from app.settings import Settings, get_settings
from app.tenants.local_key import ensure_local_key, local_key_path

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ABOUT = (
    "LEAP: fine-tune image models (Stable Diffusion) on a few images and language models on a few text "
    "examples, as a service."
)
cli = typer.Typer(help=ABOUT, no_args_is_help=True)
tenants_cli = typer.Typer(help="Create and list tenants (admin).", no_args_is_help=True)
keys_cli = typer.Typer(help="Create, list and revoke API keys (admin).", no_args_is_help=True)
cli.add_typer(tenants_cli, name="tenants")
cli.add_typer(keys_cli, name="keys")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"leap {__version__}")
        raise typer.Exit()


@cli.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print LEAP's version and exit.")
    ] = False,
) -> None:
    """LEAP: fine-tune image models (Stable Diffusion) on a few images and language models on a few text
    examples, as a service."""


def _settings() -> Settings:
    return get_settings()


@cli.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    from app.db import upgrade_database

    upgrade_database(_settings())
    typer.echo("database is up to date")


GRACEFUL_SHUTDOWN_SECONDS = 30


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Run the HTTP API only (needs a migrated database)."""
    import uvicorn

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        # Open event streams last as long as their trainings: on shutdown, requests still running
        # after this long are ended (stream clients reconnect, with Last-Event-ID, elsewhere).
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


# Libraries' own chatter (model-loading progress bars, optional-dependency notices) kept out of a
# quiet worker's output; its own log lines at `--loglevel` stay.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def worker_argv(
    queues: str, *, concurrency: int, pool: str, beat: bool, loglevel: str, quiet: bool = False
) -> list[str]:
    argv = [
        *(["--quiet"] if quiet else []),  # celery's own option: no banner
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"leap-{queues.replace(',', '-')}@%h",
    ]
    if beat:
        argv.append("-B")
    return argv


@cli.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: gpu (trainings), maintenance (sweeper).")
    ] = "gpu",
    concurrency: Annotated[int, typer.Option(help="Parallel tasks; keep 1 per GPU.")] = 1,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
    beat: Annotated[bool, typer.Option(help="Also run the periodic scheduler (one per deployment).")] = False,
    loglevel: str = "info",
    quiet: Annotated[
        bool,
        typer.Option(help="No banner, no warning about running as root, no model-loading notices or progress bars."),
    ] = False,
) -> None:
    """Run a Celery worker (trainings on the gpu queue; the sweeper on the maintenance queue)."""
    if quiet:
        import warnings

        os.environ.update(QUIET_ENV)
        # Containers run as root on purpose; the warning is for hosts, and says so at length.
        warnings.filterwarnings("ignore", message=".*superuser privileges.*")
    from workers.celery_app import create_celery

    settings = _settings()
    if beat:
        # Beat keeps its schedule in the data folder; a folder that cannot be made stops us here,
        # not later in the beat process, where the worker would still say "ready".
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            typer.echo(
                f"error: LEAP_DATA_DIR {settings.data_dir} cannot be created for beat's schedule: {error}", err=True
            )
            raise typer.Exit(2) from None
    exit_with_parent()  # started by `leap serve`: killed with its pool once serve is gone
    app = create_celery(settings)
    app.worker_main(worker_argv(queues, concurrency=concurrency, pool=pool, beat=beat, loglevel=loglevel, quiet=quiet))


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Folder of the SQLite database, local artifacts, broker and API key (default: LEAP_DATA_DIR, "
            "else .leap).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="More output: -v the workers' banners, warnings and task lines; -vv also each HTTP request.",
        ),
    ] = 0,
) -> None:
    """API + workers on this machine. With no configuration: SQLite, local files, a filesystem broker.
    Quiet by default: the API key and address, then only warnings and errors."""
    import uvicorn

    from app.db import upgrade_database
    from app.main import create_app

    if data_dir is not None:
        os.environ["LEAP_DATA_DIR"] = str(data_dir)  # the workers read it too
        get_settings.cache_clear()
    settings = _settings()
    upgrade_database(settings)
    if settings.is_embedded:
        key = ensure_local_key(settings)
        typer.echo(f"API key (tenant 'local'): {key}  (also in {local_key_path(settings.data_dir)})")
    from models.registry import load_registry

    # The training worker imports the trainer and loads the default base model at start; other
    # models (e.g. a text model, converted from its GGUF on first use) load when first trained.
    preload = json.dumps([load_registry(settings.model_registry).default_id])
    # Each worker kills itself and its pool processes once serve is gone (app.parent_watch).
    os.environ[PARENT_PID_ENV] = str(os.getpid())
    worker_output = ["--loglevel", "info" if verbose else "warning", *([] if verbose else ["--quiet"])]
    children = [
        _start_child(
            [sys.executable, "-m", "app.cli", "worker", "--queues", settings.queue, *worker_output],
            env={**os.environ, "LEAP_PRELOAD_MODELS": preload},
        ),
        _start_child(
            [
                sys.executable,
                "-m",
                "app.cli",
                "worker",
                "--queues",
                settings.maintenance_queue,
                "--pool",
                "solo",
                "--beat",
                *worker_output,
            ]
        ),
    ]
    typer.echo(f"LEAP listening on http://{host}:{port}")
    # uvicorn shuts down on SIGTERM, restores the handler it found and raises the signal again: with
    # the default handler the process would die there, before `finally` stops the workers.
    previous = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="info" if verbose > 1 else "warning",
            access_log=verbose > 1,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_children(children)


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    # In the child before exec: a session of its own (we signal its whole group), and on Linux the
    # kernel sends SIGTERM when `leap serve` dies, kill -9 included.
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _start_child(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_children(children: list[subprocess.Popen[bytes]], *, timeout: float = 20.0) -> None:
    """SIGTERM each worker (a warm shutdown), then SIGKILL whatever of its group is left."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        # Pool processes or a beat still closing: a moment, then nothing of the group survives.
        while _group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


@cli.command()
def demo(
    steps: Annotated[int | None, typer.Option(help="Training steps (default: the model's).")] = None,
    out: Annotated[Path, typer.Option(help="Where artifacts and the grid go.")] = Path("out/demo"),
    port: Annotated[int, typer.Option(help="Port for the embedded server.")] = 8765,
) -> None:
    """Start the embedded service, train on the bundled samples over HTTP, and write a before/after grid."""
    from app.demo import run_demo

    raise typer.Exit(run_demo(steps=steps, out=out, port=port))


def _uuid(value: str, what: str) -> uuid.UUID:
    parsed = uuid_or_none(value)
    if parsed is None:
        typer.echo(f"error: {value!r} is not a {what} id", err=True)
        raise typer.Exit(2)
    return parsed


@contextlib.contextmanager
def _admin_session() -> Iterator[Session]:
    """A unit of work on LEAP_DATABASE_URL for an admin command: it commits when the block ends, a
    LeapError is printed as `error: <message>` (exit 1), and the engine is always disposed."""
    from app.db import create_database, unit_of_work
    from app.errors import LeapError

    database = create_database(_settings())
    try:
        with unit_of_work(database.session_factory) as session:
            yield session
    except LeapError as error:
        typer.echo(f"error: {error.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.dispose()


@tenants_cli.command("create")
def tenants_create(
    name: str,
    max_concurrent_trainings: Annotated[
        int | None, typer.Option(help="Queued + running trainings at once (default: the server's).")
    ] = None,
    monthly_unit_limit: Annotated[int | None, typer.Option(help="Billable units per UTC month.")] = None,
    stripe_customer_id: Annotated[str | None, typer.Option(help="Stripe customer billed for usage.")] = None,
) -> None:
    """Create a tenant and print its id (the same service as POST /v1/admin/tenants)."""
    from app.tenants import service

    options = {
        "max_concurrent_trainings": max_concurrent_trainings,
        "monthly_unit_limit": monthly_unit_limit,
        "stripe_customer_id": stripe_customer_id,
    }
    limits = {key: value for key, value in options.items() if value is not None}
    with _admin_session() as session:
        tenant = service.create_tenant(session, name=name, **limits)
    typer.echo(str(tenant.id))


@tenants_cli.command("list")
def tenants_list() -> None:
    """List tenants: id, created_at, name."""
    from app.tenants import service

    with _admin_session() as session:
        for tenant in service.list_tenants(session):
            typer.echo(f"{tenant.id}\t{tenant.created_at.isoformat()}\t{tenant.name}")


@keys_cli.command("create")
def keys_create(tenant_id: str, name: Annotated[str, typer.Option(help="A label for the key.")] = "") -> None:
    """Create an API key for a tenant; the key is printed once and never stored."""
    from app.tenants import service

    tenant = _uuid(tenant_id, "tenant")
    with _admin_session() as session:
        _, plaintext = service.create_api_key(session, tenant_id=tenant, name=name)
    typer.echo(plaintext)


@keys_cli.command("list")
def keys_list(tenant_id: str) -> None:
    """List a tenant's keys: id, prefix, created_at, revoked_at, name."""
    from app.tenants import service

    tenant = _uuid(tenant_id, "tenant")
    with _admin_session() as session:
        for key in service.list_api_keys(session, tenant_id=tenant):
            revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
            typer.echo(f"{key.id}\tleap_live_{key.prefix}_…\t{key.created_at.isoformat()}\t{revoked}\t{key.name}")


@keys_cli.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key; requests with it fail at once."""
    from app.tenants import rate_limit, service

    key = _uuid(key_id, "key")
    # Once committed, the revocation is announced to the API processes sharing this Redis.
    rate_limit.watch_revocations(_settings())
    with _admin_session() as session:
        service.revoke_api_key(session, key_id=key)
    typer.echo("revoked")


def _register_train_command() -> None:
    # `leap train` lives in the ML core; imported here only for its signature (no torch at import).
    try:
        from models.trainer.command import train_command
    except ImportError as error:  # a slim API install without the trainer
        if error.name and not error.name.startswith("models"):
            raise
        return
    cli.command("train")(train_command)


_register_train_command()


def _register_client_commands() -> None:
    # submit, status, list, cancel, download: the API over HTTP (app/client/commands.py).
    from app.client.commands import COMMANDS

    for name, command in COMMANDS.items():
        cli.command(name)(command)


_register_client_commands()


def main() -> None:
    """Entry point of the `leap` script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()


if __name__ == "__main__":
    main()
