"""A live progress bar over LeapClient.wait() (rich), shared by `leap submit` and `leap demo`."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from app.client.client import LeapClient
from app.trainings.schemas import Training


def follow(client: LeapClient, training_id: str, console: Console, *, timeout: float | None = None) -> Training:
    """Wait for the training, drawing status, steps and loss as they change; returns the final state."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=None, loss="-")

        def update(training: Training) -> None:
            progress = training.progress
            bar.update(
                task,
                description=training.status,
                completed=progress.step,
                total=progress.total,
                loss=f"{progress.loss:.4f}" if progress.loss is not None else "-",
            )

        return client.wait(training_id, timeout=timeout, on_update=update)
