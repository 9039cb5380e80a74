"""Transactional outbox: task messages are rows written with the change that needs them, sent after commit."""
