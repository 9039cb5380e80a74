"""Billing sinks fed from the usage ledger by a relay with retries (webhook, Stripe meter events)."""
