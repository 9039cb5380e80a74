"""Usage metering: the ledger of finished trainings, reports, exports and monthly quotas."""
