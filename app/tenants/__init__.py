"""Tenants and their API keys; `auth` turns a Bearer key into the calling tenant."""
