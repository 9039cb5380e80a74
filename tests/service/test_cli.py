"""Admin commands: tenants and API keys created, listed and revoked with `leap`."""

from __future__ import annotations

import uuid

from .helpers import assert_error, run_leap


def test_admin_creates_a_tenant_and_key_that_work_until_revoked(client, settings):
    created = run_leap(settings, "tenants", "create", "Acme Corp")
    assert created.returncode == 0, created.stderr
    tenant_id = created.stdout.strip()
    uuid.UUID(tenant_id)
    assert "Acme Corp" in run_leap(settings, "tenants", "list").stdout

    key = run_leap(settings, "keys", "create", tenant_id, "--name", "ci").stdout.strip()
    assert key.startswith("leap_live_")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/trainings", headers=headers).status_code == 200

    listed = run_leap(settings, "keys", "list", tenant_id).stdout
    key_id, prefix = listed.split("\t")[:2]
    assert prefix.startswith(key[: len("leap_live_") + 12]) and key not in listed

    revoked = run_leap(settings, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and revoked.stdout.strip() == "revoked"
    assert_error(client.get("/v1/trainings", headers=headers), 401, "unauthorized", "revoked")


def test_admin_commands_report_bad_ids(settings):
    malformed = run_leap(settings, "keys", "create", "nope")
    assert malformed.returncode == 2 and "not a tenant id" in malformed.stderr
    unknown = run_leap(settings, "keys", "create", str(uuid.uuid4()))
    assert unknown.returncode == 1 and "not found" in unknown.stderr
