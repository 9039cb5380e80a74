"""Celery task names: the one place both the enqueuers (outbox) and the tasks (workers) read them."""

RUN_TRAINING = "trainings.run"
DELIVER_WEBHOOK = "webhooks.deliver"
RELAY_USAGE = "billing.relay"
SWEEP = "sweeper.sweep"
