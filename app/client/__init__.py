"""Python client of the LEAP API (httpx, torch-free): submit, follow, cancel and download trainings.

with LeapClient("http://127.0.0.1:8000", api_key) as leap:
    training = leap.submit(Path("photos").glob("*.png"), steps=400)
    # or a text model: leap.submit(Path("texts"), base_model="smollm2-135m")  (.txt files or one .jsonl)
    training = leap.wait(training.id)
    leap.download(training, Path("out"))
"""

from app.client.client import (
    ApiError,
    ChecksumMismatch,
    ClientError,
    LeapClient,
    NoInputs,
    RetryNotice,
    Unreachable,
    WaitTimeout,
    input_files,
    is_finished,
)
from app.trainings.schemas import Artifact, Training, TrainingList

__all__ = [
    "ApiError",
    "Artifact",
    "ChecksumMismatch",
    "ClientError",
    "LeapClient",
    "NoInputs",
    "RetryNotice",
    "Training",
    "TrainingList",
    "Unreachable",
    "WaitTimeout",
    "input_files",
    "is_finished",
]
