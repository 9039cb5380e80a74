"""Python client of the LEAP API (httpx, torch-free): submit, follow, cancel and download trainings.

    with LeapClient("http://127.0.0.1:8000", api_key) as leap:
        training = leap.submit(Path("photos").glob("*.png"), steps=400)
        training = leap.wait(training.id)
        leap.download(training, Path("out"))
"""

from app.client.client import (
    ApiError,
    ChecksumMismatch,
    ClientError,
    LeapClient,
    Unreachable,
    WaitTimeout,
    is_finished,
)
from app.trainings.schemas import Artifact, Training, TrainingList

__all__ = [
    "ApiError",
    "Artifact",
    "ChecksumMismatch",
    "ClientError",
    "LeapClient",
    "Training",
    "TrainingList",
    "Unreachable",
    "WaitTimeout",
    "is_finished",
]
