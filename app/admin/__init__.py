"""The admin API (LEAP_ADMIN_TOKEN): tenants, their keys and limits, usage export, billing replay."""
