"""A live progress bar over LeapClient.wait() (rich), shared by `leap submit` and `leap demo`."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from app.client.client import LeapClient
from app.enums import TrainingStatus
from app.trainings.schemas import Training


def steps_text(step: int, total: float | None) -> str:
    """`12/400 steps`, or `12/? steps` while the total is unknown (a server before it reported it)."""
    return f"{step}/{int(total) if total is not None else '?'} steps"


def state_text(training: Training) -> str:
    """The status, with the queue position while queued: `queued #3`."""
    if training.status == TrainingStatus.QUEUED and training.queue_position is not None:
        return f"queued #{training.queue_position}"
    return training.status


class StepsColumn(ProgressColumn):
    """step/total, with `?` for a total not known yet (rich's own column would print None)."""

    def render(self, task: Task) -> Text:
        return Text(steps_text(int(task.completed), task.total))


def follow(client: LeapClient, training_id: str, console: Console, *, timeout: float | None = None) -> Training:
    """Wait for the training, drawing status (and queue position), steps of the planned total and loss
    as they change; returns the final state."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        StepsColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(TrainingStatus.QUEUED, total=None, loss="-")

        def update(training: Training) -> None:
            progress = training.progress
            bar.update(
                task,
                description=state_text(training),
                completed=progress.step,
                total=progress.total,
                loss=f"{progress.loss:.4f}" if progress.loss is not None else "-",
            )

        return client.wait(training_id, timeout=timeout, on_update=update)
