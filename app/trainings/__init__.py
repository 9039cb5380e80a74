"""Trainings: submission, status, listing and cancellation; the worker-side state transitions."""
