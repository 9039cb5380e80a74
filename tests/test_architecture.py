"""Imports run one way: models imports nothing of app or workers (nor web, database or queue libraries),
workers never import app's HTTP layer or its services, and no module reaches itself through others.
Function-level (lazy) imports count: a cycle hidden in a function is still a cycle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers", "models")
# workers may use app's domain and infrastructure (settings, db, orm, repositories, lifecycle, delivery) but
# never the HTTP layer or the request-side services.
WORKERS_MAY_NOT = re.compile(
    r"^app\.(main|deps|errors_http|cli|demo|openapi_export|client(\..+)?|tenants\.(auth|rate_limit)"
    r"|[a-z_]+\.(routes|service|schemas))$"
)
MODELS_MAY_NOT_USE = {"app", "workers", "fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "redis"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.source} -> {self.target}"


def modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(target: str, known: dict[str, Path]) -> str:
    """The longest known module prefix of a dotted name; outside the project, its top-level name."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return parts[0]


def edges(root: Path, known: dict[str, Path]) -> list[Edge]:
    found: dict[Edge, None] = {}  # ordered, without the repeats of `from x import a, b`
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):  # every level: module, function, TYPE_CHECKING blocks
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import mod` names a module when pkg.mod is one
                named = (f"{module}.{alias.name}" for alias in node.names)
                targets = [full if full in known else module for full in named]
            for target in targets:
                resolved = _resolve(target, known)
                if resolved != name:
                    found[Edge(name, resolved, str(path.relative_to(root)), node.lineno)] = None
    return list(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(root: Path) -> list[str]:
    known = modules(root)
    all_edges = edges(root, known)
    problems = [
        f"models imports {edge.target}: {edge}"
        for edge in all_edges
        if edge.source.split(".")[0] == "models" and edge.target.split(".")[0] in MODELS_MAY_NOT_USE
    ]
    problems += [
        f"workers imports app's HTTP layer or a service: {edge}"
        for edge in all_edges
        if edge.source.split(".")[0] == "workers" and WORKERS_MAY_NOT.match(edge.target)
    ]
    graph: dict[str, set[str]] = {}
    for edge in all_edges:
        if edge.target in known:
            graph.setdefault(edge.source, set()).add(edge.target)
    for component in cycles(graph):
        inside = [str(edge) for edge in all_edges if edge.source in component and edge.target in component]
        problems.append("import cycle: " + " | ".join(inside))
    return problems


def test_imports_run_one_way() -> None:
    problems = violations(ROOT)
    assert not problems, "\n".join(problems)


def test_the_checker_finds_forbidden_imports_and_cycles(tmp_path: Path) -> None:
    files = {
        "models/__init__.py": "",
        "models/core.py": "def f():\n    from app.thing import x\n",
        "models/ok.py": "import torch\nfrom . import core\n",
        "app/__init__.py": "",
        "app/thing.py": "x = 1\n",
        "app/p.py": "from app import q\n",
        "app/q.py": "def g():\n    from .p import y\n",
        "app/trainings/__init__.py": "",
        "app/trainings/service.py": "",
        "app/trainings/lifecycle.py": "",
        "workers/__init__.py": "",
        "workers/task.py": "from app.trainings import service, lifecycle\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems = violations(tmp_path)
    assert any(p.startswith("models imports app.thing") and "models/core.py:2" in p for p in problems), problems
    assert any("workers imports" in p and "app.trainings.service" in p for p in problems), problems
    assert not any("app.trainings.lifecycle" in p for p in problems), problems
    assert any(p.startswith("import cycle") and "app.p" in p and "app.q" in p for p in problems), problems
    assert len(problems) == 3, problems
