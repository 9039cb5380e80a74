"""Every command in README.md and docs/getting-started.md runs as written: the fenced `bash` and
`python` blocks are executed in order, in a folder laid out like a fresh clone (models/, Makefile and
.venv/ linked in), against the embedded service that the pages themselves start.

A block may be preceded by an HTML comment (invisible on GitHub and on the docs site):
`<!-- docs-test: background -->` starts a long-running command (`leap serve`) and waits for it;
`<!-- docs-test: apart -->` runs a block that needs nothing before it (`make demo`) in a folder of its
own, beside the others; `<!-- docs-test: skip (why) -->` names the one command this test cannot run,
the suite itself.
Two changes are made to what runs: the API listens on a free port instead of 8000, and `make`
does not refresh the virtualenv (the folder's Makefile includes the real one and empties `venv`'s
recipe): the test runs inside that same virtualenv."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
from history import history_mentions

from .helpers import REPO_ROOT, free_port, wait_for

PAGES = ("README.md", "docs/getting-started.md")
RUNNABLE = {"bash", "python"}
_FENCE = re.compile(r"^(?:<!-- docs-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.M | re.S)
_BLOCK_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    mark: str
    body: str


def page_blocks(page: str) -> list[Block]:
    """The fenced code blocks of a page, with the docs-test mark before each (default "run")."""
    text = (REPO_ROOT / page).read_text(encoding="utf-8")
    return [
        Block(page, text.count("\n", 0, match.start()) + 1, match["lang"], match["mark"] or "run", match["body"])
        for match in _FENCE.finditer(text)
    ]


def runnable_blocks() -> list[Block]:
    """The command blocks of every page in order; a block repeated word for word on a later page
    (the tutorial repeats the README's first training) runs once."""
    seen: set[tuple[str, str]] = set()
    blocks = []
    for page in PAGES:
        for block in page_blocks(page):
            if block.lang in RUNNABLE and (block.lang, block.body) not in seen:
                seen.add((block.lang, block.body))
                blocks.append(block)
    return blocks


def test_command_blocks_are_bash_or_python_with_a_known_mark():
    for page in PAGES:
        blocks = page_blocks(page)
        assert blocks, page
        for block in blocks:
            where = f"{block.page}:{block.line}"
            # A shell or Python block under another name would escape this test.
            assert block.lang not in {"", "sh", "shell", "console", "py", "python3"}, where
            assert block.mark in {"run", "background", "apart"} or block.mark.startswith("skip ("), where
    skipped = [block.body.strip() for block in runnable_blocks() if block.mark.startswith("skip")]
    assert all(body.startswith("make test") for body in skipped), skipped


def make_workspace(root: Path) -> Path:
    """A folder that looks like the repository root to the pages' commands."""
    root.mkdir()
    for name in ("models", ".venv"):
        (root / name).symlink_to(REPO_ROOT / name)
    (root / "Makefile").write_text(f"include {REPO_ROOT / 'Makefile'}\nvenv: ;\n")
    return root


def _environment(port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEAP_")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "LEAP_URL": f"http://127.0.0.1:{port}"}


def _as_run(body: str, port: int) -> str:
    body = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return re.sub(r"\bleap serve\b", f"leap serve --port {port}", body)


def _argv(lang: str, body: str, workspace: Path) -> list[str]:
    if lang == "python":
        return [str(workspace / ".venv" / "bin" / "python"), "-c", body]
    # One terminal: the variables a block sets (KEY=..., ID=...) are there for the blocks after it.
    state = workspace / ".shell-variables"
    names = " ".join(sorted(set(re.findall(r"^\s*([A-Z_][A-Z0-9_]*)=", body, re.M)))) or "_"
    script = (
        f"[ -f {state} ] && source {state}\nset -euo pipefail\n{body}\n"
        f"declare -p {names} >> {state} 2>/dev/null || true\n"
    )
    return ["bash", "-c", script]


def _check(where: str, body: str, returncode: int, output: str) -> None:
    assert returncode == 0, f"{where} failed:\n{body}\n{output[-6000:]}"
    # What the commands print (the demo prints the start the guard chose and why) speaks about the
    # product, not its development.
    assert not history_mentions(output), (where, history_mentions(output))


def _ready(port: int, server: subprocess.Popen[bytes]) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return server.poll() is not None


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def test_readme_and_getting_started_commands_run_as_written(tmp_path: Path):
    workspace = make_workspace(tmp_path / "clone")
    port = free_port()
    env = _environment(port)
    servers: list[subprocess.Popen[bytes]] = []
    apart: list[tuple[str, str, subprocess.Popen[bytes], Path]] = []
    try:
        for block in runnable_blocks():
            where = f"{block.page}:{block.line}"
            body = _as_run(block.body, port)
            if block.mark.startswith("skip"):
                continue
            if block.mark == "apart":
                # Needs nothing before it and leaves nothing after it: its own folder, beside the rest.
                folder = make_workspace(tmp_path / f"apart-{len(apart)}")
                log = folder / "output.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        _argv(block.lang, body, folder),
                        cwd=folder,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                apart.append((where, block.body, process, log))
            elif block.mark == "background":
                with (workspace / f"background-{block.line}.log").open("wb") as out:
                    servers.append(
                        subprocess.Popen(
                            _argv(block.lang, body, workspace),
                            cwd=workspace,
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                wait_for(lambda: _ready(port, servers[-1]), timeout=90, message=f"{where} to serve")
                assert servers[-1].poll() is None, f"{where} exited"
            else:
                result = subprocess.run(
                    _argv(block.lang, body, workspace),
                    cwd=workspace,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=_BLOCK_TIMEOUT,
                )
                _check(where, block.body, result.returncode, result.stdout + result.stderr)
        # Every training the pages ran, as the API returns it: init notes come from the boosters' notes.
        key = (workspace / ".leap" / "api-key").read_text().strip()
        listed = httpx.get(
            f"http://127.0.0.1:{port}/v1/trainings?limit=100", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        trainings = listed.json()["data"]
        assert trainings and any(training["init_note"] for training in trainings), listed.text
        assert not history_mentions(listed.text), history_mentions(listed.text)
        for where, original, process, log in apart:
            returncode = process.wait(timeout=_BLOCK_TIMEOUT)
            _check(where, original, returncode, log.read_text(errors="replace"))
    finally:
        for process in [*servers, *(entry[2] for entry in apart)]:
            _stop(process)
    # What the pages promise came back.
    assert (workspace / "out" / "heart" / "learned_embeds.safetensors").is_file()
    assert (workspace / "out" / "heart" / "heart_lora.safetensors").is_file()
    assert (workspace / "heart.png").is_file() and (workspace / "star-after.png").is_file()
    assert (workspace / "out" / "star" / "manifest.json").is_file()
    assert all(list((tmp_path / f"apart-{index}" / "out" / "demo").glob("*-grid.png")) for index in range(len(apart)))
    assert apart, "make demo runs"
