"""A downloaded training's previews: where they are, what they say, and opening the picture in the
desktop's viewer where there is one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import webbrowser
from pathlib import Path

from app.client.client import artifact_path
from app.trainings.schemas import Training


def preview_path(training: Training, folder: Path) -> Path | None:
    """The downloaded previews' main file: preview.png (image) or previews.json (text); None without."""
    previews = training.previews
    if previews is None:
        return None
    if previews.grid is not None:
        return artifact_path(folder, previews.grid.name)
    found = next((artifact for artifact in training.artifacts if artifact.kind == "previews"), None)
    return artifact_path(folder, found.name) if found else None


def sample_lines(training: Training) -> list[str]:
    """A text training's previews as lines: each prompt, then its base and fine-tuned completions."""
    if training.previews is None:
        return []
    lines = []
    for sample in training.previews.samples:
        lines += [f"  {sample.prompt!r}", f"    base:       {sample.base!r}", f"    fine-tuned: {sample.fine_tuned!r}"]
    return lines


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_file(path: Path) -> bool:
    """Open the file in the desktop's default viewer; False where this machine has none (a server,
    an SSH session): console browsers are never started, they would take over the terminal."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 - the user's own file
        return True
    if sys.platform == "darwin":
        opener = shutil.which("open")
    elif _has_display():
        opener = shutil.which("xdg-open")
    else:
        return False
    if opener:
        subprocess.Popen(  # noqa: S603 - a fixed viewer and the user's own file
            [opener, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return True
    return webbrowser.open(path.resolve().as_uri())
