"""Billing relay tasks: feed usage records to the configured billing sinks (added with the sinks)."""
