"""The service's one settings object (environment variables prefixed LEAP_)."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_SIGNING_SECRET = "dev-signing-secret"


class PriceTable(BaseModel):
    """Billable units of a training: ceil(steps / 1000 x per-mode rate x multipliers + inputs x per-input),
    with the image or the text price list by the training's kind."""

    units_per_1000_steps: dict[str, float] = {"pivotal": 10.0, "textual_inversion": 5.0, "lora": 8.0}
    """Image trainings, per mode."""
    units_per_image: float = 0.0
    text_units_per_1000_steps: dict[str, float] = {"pivotal": 4.0, "token": 2.0, "lora": 3.0}
    """Text trainings, per mode (token, lora, pivotal)."""
    units_per_text_example: float = 0.0
    base_model_multiplier: dict[str, float] = {}
    """Per base-model id; missing: 1."""
    device_class_multiplier: dict[str, float] = {}
    """Per device class (gpu, cpu, mps); missing: 1. Estimates assume 1."""


class Settings(BaseSettings):
    """Every knob of the API and the workers; unset values give the embedded default."""

    model_config = SettingsConfigDict(env_prefix="LEAP_", env_file=None, extra="ignore")

    environment: Literal["development", "production"] = "development"
    """production refuses the built-in development secrets."""
    data_dir: Path = Path(".leap")
    """Embedded default: holds the SQLite database, the local artifacts and the broker folder."""

    database_url: str | None = None
    """SQLAlchemy URL, e.g. postgresql+psycopg://user@host/leap. Default: SQLite in data_dir."""
    database_pool_size: int = 10
    broker_url: str | None = None
    """Celery broker, e.g. redis://host:6379/0. Default: kombu's filesystem transport in data_dir."""
    storage_url: str | None = None
    """s3://bucket/prefix for S3-compatible storage, or file:///path. Default: file storage in data_dir."""
    s3_endpoint_url: str | None = None
    """S3 endpoint (MinIO, moto); unset means AWS."""
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    """Unset: boto3's usual credential chain (AWS_* variables, instance role, ...)."""
    s3_secret_access_key: SecretStr | None = None
    s3_public_endpoint_url: str | None = None
    """Endpoint written into presigned URLs when clients reach storage by another name (compose)."""
    public_url: str | None = None
    """Base URL clients reach the API at: the base of a training's `urls`, its Location header, its
    webhooks' links and links to local files. Default: the address each request was sent to (as a
    trusted proxy forwarded it, see trusted_proxies), kept with each training for its webhooks."""
    trusted_proxies: list[str] = []
    """CIDRs of reverse proxies whose X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-Prefix are
    believed when LEAP_PUBLIC_URL is unset, e.g. ["10.0.0.0/8"]; from other clients they are ignored."""

    admin_token: SecretStr = SecretStr(DEV_ADMIN_TOKEN)
    """Authorises the admin API (`/v1/admin/...`)."""
    signing_secret: SecretStr = SecretStr(DEV_SIGNING_SECRET)
    """Signs the expiring download URLs of local-disk storage."""

    model_registry: Path | None = None
    """Base-model registry YAML; default: the bundled models/registry.yaml."""

    # Upload limits: everything is checked before anything is stored.
    max_upload_bytes: int = 200 * 1024 * 1024
    """Whole multipart request."""
    max_image_bytes: int = 25 * 1024 * 1024
    """One image file (or one zip entry)."""
    max_image_pixels: int = 40_000_000
    """width x height of one image; larger is refused before decoding (decompression bombs)."""
    max_zip_entries: int = 200
    max_zip_ratio: int = 200
    """Largest uncompressed/compressed ratio of one zip entry."""
    max_text_file_bytes: int = 8 * 1024 * 1024
    """The examples of a text training: one .txt or .jsonl file, and all its files together."""
    max_metadata_bytes: int = 16 * 1024
    max_json_body_bytes: int = 32 * 1024 * 1024
    """A submission sent as application/json (its files as base64 data URIs, read whole): larger sets go
    as multipart/form-data or by URL. LEAP_MAX_UPLOAD_BYTES bounds it too."""
    upload_decode_concurrency: int = 1
    """Images decoded at once per API process (each up to max_image_pixels x 3 bytes of memory)."""
    max_steps: int = 20_000

    # Inputs given by URL (images_url, examples_url): fetched by the API at submission.
    input_url_timeout: timedelta = timedelta(seconds=10)
    """Connecting to the server of an input URL, and each read from it."""
    input_url_deadline: timedelta = timedelta(seconds=120)
    """The whole download of a submission's input URLs, all of them, redirects and headers included."""
    input_url_max_redirects: int = 5
    """Redirects followed per input URL (each hop's address is checked again)."""
    input_url_allowed_networks: list[str] = []
    """CIDRs exempt from the SSRF guard for input URLs (tests, on-premises file servers)."""

    artifact_url_ttl: timedelta = timedelta(minutes=15)
    """How long a presigned artifact URL stays valid."""
    artifact_retention: timedelta = timedelta(days=7)
    """Artifacts and inputs of finished trainings are deleted after this."""
    orphan_input_grace: timedelta = timedelta(minutes=10)
    """Stored inputs with no training row (the API died mid-submission) are deleted once this old.
    A submission commits within seconds of storing its last input, so this only needs to cover that
    and the clock difference between the API and the storage."""

    # Workers.
    queue: str = "gpu"
    maintenance_queue: str = "maintenance"
    lease_duration: timedelta = timedelta(seconds=60)
    """A running training's lease; the worker renews it with every progress write."""
    progress_interval: timedelta = timedelta(seconds=2)
    """At most one progress write (and lease renewal, cancel check) per interval."""
    max_attempts: int = 3
    """Claims of one training before an expired lease fails it for good."""
    retry_backoff: timedelta = timedelta(seconds=10)
    retry_backoff_max: timedelta = timedelta(minutes=10)
    transient_retry_window: timedelta = timedelta(minutes=30)
    """A training failing on storage or database errors is retried (with the backoff above) for this
    long from its first such failure; those retries do not count against max_attempts."""
    sweeper_interval: timedelta = timedelta(seconds=15)
    outbox_grace: timedelta = timedelta(seconds=5)
    """Undispatched outbox messages older than this are sent by the sweeper (the API died in between)."""
    delivery_resend_after: timedelta = timedelta(seconds=30)
    """A pending webhook or billing delivery this far past due that no worker is attempting is sent
    again by the sweeper (the worker holding its message died)."""
    work_dir: Path | None = None
    """Scratch space of the worker; default data_dir/work."""
    trainer: str = "models.trainer.train:train"
    """Import path of the training function (module:function) of image trainings."""
    text_trainer: str = "models.text.train:train"
    """Import path of the training function of text trainings."""
    preload_models: bool | list[str] = False
    """Workers load base models at start instead of on first use: true, every registered model;
    a JSON list, those model ids (`leap serve`: the default model only)."""

    # Training logs and live events (GET /v1/trainings/{id}/logs and /stream).
    log_progress_steps: int = 50
    """A trainer progress line in a training's log at the first step, every this many steps, and the last."""
    log_max_lines: int = 2000
    """Lines kept per training; progress lines stop 50 short of it so the final notes still fit."""
    log_message_max_chars: int = 2000
    """Longer messages are cut to this many characters."""
    events_redis_url: str | None = None
    """Redis carrying live training events to the API's streams; default: the broker when it is
    Redis. Without one (the embedded default) each API process polls the database instead."""
    stream_keepalive: timedelta = timedelta(seconds=15)
    """A comment line is sent on an idle stream this often, so proxies keep it open."""
    stream_poll_interval: timedelta = timedelta(seconds=0.5)
    """Without Redis: how often each API process reads the streamed trainings' progress and logs."""
    stream_queue_interval: timedelta = timedelta(seconds=1)
    """How often a stream of a queued training reads its queue position (sent when it changed)."""

    # Tenancy: rate and concurrency limits.
    rate_limit_requests: int = 600
    """Requests one API key may make per rate_limit_window; 0 turns the limit off."""
    rate_limit_window: timedelta = timedelta(minutes=1)
    rate_limit_redis_url: str | None = None
    """Redis holding the rate-limit counters; default: the broker when it is Redis, else in-process."""
    api_key_cache_ttl: timedelta = timedelta(seconds=30)
    """How long an API process trusts an API key it verified (0: check the database on every
    request). A revocation through LEAP (API or CLI) ends it at once in every API process sharing
    the rate limit's Redis; the cache is used only with that Redis or on the single-process
    embedded default."""
    max_concurrent_trainings: int = 10
    """Queued + running trainings per tenant (a tenant's own limit overrides it)."""
    concurrency_retry_after: timedelta = timedelta(seconds=30)
    """Retry-After sent with a 429 for too many concurrent trainings."""

    # Webhooks.
    webhook_retry_schedule: list[timedelta] = [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
    ]
    """Waits before each retry of a failed delivery (JSON list of seconds); +-10% jitter."""
    webhook_timeout: timedelta = timedelta(seconds=10)
    """Whole request to a receiver."""
    webhook_response_bytes: int = 1024
    """Kept of each receiver response, for the attempts log."""
    webhook_secret_grace: timedelta = timedelta(hours=24)
    """After a secret rotation the old secret also signs for this long."""
    webhook_disable_after_failures: int = 50
    """Consecutive failed attempts after which an endpoint is disabled (its owner sees why)."""
    webhook_allowed_networks: list[str] = []
    """CIDRs exempt from the SSRF guard (tests, on-premises receivers), e.g. ["10.1.0.0/16"]."""

    # Usage metering.
    price_table: PriceTable = PriceTable()
    """JSON, e.g. {"units_per_1000_steps": {"pivotal": 10}, "units_per_image": 0.1}."""

    # Billing sinks, fed from the usage ledger.
    billing_sinks: list[Literal["webhook", "stripe"]] = ["webhook"]
    """Where each usage record goes: the signed usage.recorded webhook, Stripe Billing Meter Events."""
    billing_max_attempts: int = 10
    billing_retry_backoff: timedelta = timedelta(seconds=30)
    billing_retry_backoff_max: timedelta = timedelta(hours=1)
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    """Stripe API base URL; unset: https://api.stripe.com (tests point it at a local server)."""
    stripe_meter_event_name: str = "leap_billable_units"
    """event_name of the Stripe meter counting billable units."""

    @field_validator(
        "artifact_url_ttl",
        "artifact_retention",
        "orphan_input_grace",
        "lease_duration",
        "progress_interval",
        "retry_backoff",
        "retry_backoff_max",
        "transient_retry_window",
        "sweeper_interval",
        "outbox_grace",
        "delivery_resend_after",
        "rate_limit_window",
        "api_key_cache_ttl",
        "concurrency_retry_after",
        "webhook_timeout",
        "webhook_secret_grace",
        "input_url_timeout",
        "input_url_deadline",
        "billing_retry_backoff",
        "billing_retry_backoff_max",
        "stream_keepalive",
        "stream_poll_interval",
        "stream_queue_interval",
        mode="before",
    )
    @classmethod
    def _seconds(cls, value: object) -> object:
        # Durations may be given as plain seconds ("60", "0.5") as well as ISO 8601 ("PT1M").
        if isinstance(value, str):
            try:
                return timedelta(seconds=float(value))
            except ValueError:
                return value
        return value

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment == "production":
            if self.admin_token.get_secret_value() == DEV_ADMIN_TOKEN:
                raise ValueError("LEAP_ADMIN_TOKEN must be set outside development")
            if self.signing_secret.get_secret_value() == DEV_SIGNING_SECRET:
                raise ValueError("LEAP_SIGNING_SECRET must be set outside development")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'leap.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost/"

    @property
    def broker_folder(self) -> Path:
        """Message folder of the embedded filesystem broker."""
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'files').resolve()}"

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.data_dir / "work").resolve()

    @property
    def resolved_events_redis_url(self) -> str | None:
        """Where live training events are published: LEAP_EVENTS_REDIS_URL, else a Redis broker."""
        if self.events_redis_url:
            return self.events_redis_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def is_embedded(self) -> bool:
        return self.database_url is None or self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
