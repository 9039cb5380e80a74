"""Celery app and tasks: trainings on the "gpu" queue, the sweeper on the maintenance queue."""
