"""Signed webhooks (Standard Webhooks): endpoints, events written with state changes, deliveries."""
