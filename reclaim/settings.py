"""Settings from the environment (prefix ``RECLAIM_``) or a ``.env`` file, in one class.

Secrets (Stripe keys, webhook signing secrets) arrive with the serving issue and will have no
defaults; everything here has an embedded default that needs no set-up.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reclaim.experiment import ExperimentDesign, Segment


class Settings(BaseSettings):
    """Reclaim's settings. Each field reads ``RECLAIM_<NAME>`` from the environment."""

    # an empty variable (``RECLAIM_METRICS_TOKEN=`` in a .env) is unset, never an empty secret
    model_config = SettingsConfigDict(
        env_prefix="RECLAIM_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    data_dir: Path = Path("data")
    """The one folder where commands keep what they make unasked: contract tables, and the
    default stores (``reclaim.db``, ``mlflow.db`` and its artifacts in ``mlruns``)."""
    database_url: str = ""
    """The operational store (SQLite embedded; PostgreSQL in production). Unset:
    ``sqlite:///DATA_DIR/reclaim.db``."""
    migrate_on_start: bool = True
    """``reclaim serve`` and ``reclaim scheduler`` bring the store to the latest migration as
    they start (one process at a time). False: they refuse a store that is not at it, and
    ``reclaim migrate`` runs once before them (a deployment's choice: docs/deploy.md)."""
    mlflow_tracking_uri: str = ""
    """MLflow tracking store. Unset: ``sqlite:///DATA_DIR/mlflow.db``."""
    dashboard_session_secret: SecretStr | None = None
    """Signs dashboard session cookies. Unset: a random secret per process (sessions end when
    the server restarts; with several workers, set it)."""
    dashboard_session_hours: float = 8.0
    """How long a dashboard sign-in lasts."""
    dashboard_secure_cookies: bool = True
    """Send the session cookie only over HTTPS (browsers treat http://localhost as secure)."""
    mlflow_artifact_uri: str | None = None
    """Where a new MLflow experiment keeps its artifacts (models, plots): a folder or an object
    store URI. Unset: an ``mlruns`` folder beside a SQLite store, the server's own choice for
    a tracking server."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line with the request id, the connected account and the
    payment where there is one (``reclaim.logs``); ``text``: a line for people."""
    lightgbm_threads: int = Field(default=0, ge=0)
    """Threads per LightGBM call, training and scoring; 0: LightGBM's default, every core.
    Where several processes share the cores (API workers, parallel test workers), set it to
    cores / processes: LightGBM's idle threads spin, so oversubscribed cores lose time."""

    stripe_api_key: SecretStr | None = None
    """The platform's secret key. No default: commands that call Stripe refuse to run without
    it."""
    stripe_webhook_secret_platform: SecretStr | None = None
    """Signing secret of the platform webhook endpoint. No default."""
    stripe_webhook_secret_connect: SecretStr | None = None
    """Signing secret of the Connect webhook endpoint (a separate endpoint). No default."""
    webhook_tolerance_seconds: int = 300
    """Deliveries signed longer ago than this are rejected as stale; signed further ahead of
    this server's clock than this, as forged or from a broken clock."""
    webhook_max_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest webhook body taken (Stripe's events are a few kB; 1 MiB leaves room)."""
    webhook_retry_seconds: float = Field(default=30.0, gt=0)
    """How often ``reclaim serve`` retries stored events that failed to process (each event
    backs off exponentially from this, up to an hour)."""
    webhook_stuck_seconds: float = Field(default=3600.0, gt=0)
    """An event still unprocessed this long after it arrived counts as stuck (metric, alert)."""
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    """How long the API trusts an API key it has checked before reading the store again: a
    revoked key stops working within this time; 0 reads the store on every request."""
    metrics_token: SecretStr | None = None
    """When set, ``GET /metrics`` needs ``Authorization: Bearer <token>`` (Prometheus:
    ``authorization: {credentials: …}``); unset, it is open to whoever reaches the port."""
    report_cache_seconds: float = Field(default=300.0, ge=0)
    """How old an experiment report an API process computed for the dashboard may get before a
    view starts its recomputation in the background (the view still gets the kept one at once;
    the page says when it was computed); 0 computes it on every view."""
    config_cache_seconds: float = Field(default=5.0, ge=0)
    """How long an API process trusts an account's configuration it has read: a change made
    through the same process applies at once, one made elsewhere (another worker, a script)
    within this time; 0 reads the store for every decision."""
    max_body_bytes: int = Field(default=4_194_304, ge=1024)
    """Largest request body the API reads (a 1,000-decision batch is about 1.5 MB)."""
    policy_uri: str = "models:/reclaim-policy@champion"
    """The policy the API serves, from the MLflow registry."""
    policy_reload_seconds: float = 60.0
    """How often the API checks whether the alias moved, and reloads if it did."""
    decision_batch_max: int = Field(default=64, ge=1, le=1000)
    """Most decisions one model call computes per API process: requests waiting while the
    model is busy are decided together, up to this many (``serving/batcher.py``)."""
    experiment_control: str | None = None
    """Run an A/B test: this reference policy (e.g. ``stripe_like``) decides for the control
    arm, the served policy for the rest; unset means no experiment."""
    experiment_control_share: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of units in the control arm when no rollout is set."""
    experiment_name: str = "reclaim-ab"
    """The experiment's name: its assignments are stored under it and it salts the hash."""
    experiment_unit: Literal["customer", "account"] = "customer"
    """What is randomized: each customer, or each connected account as a whole."""
    experiment_rollout: list[Segment] | None = None
    """Treatment share per account size segment, as JSON, e.g.
    ``[{"name": "small", "max_failed_payments": 100, "treatment_share": 0.1},
    {"name": "large", "treatment_share": 0.5}]``; unset: one segment, 1 − control share."""
    report_currency: str = "usd"
    """The currency ``reclaim report`` states revenue in."""
    report_fx: dict[str, float] = {"usd": 1.0}
    """Amount of the report currency per major unit of each currency, as JSON."""

    @model_validator(mode="after")
    def _stores_in_the_data_folder(self) -> Settings:
        """Stores not named live in ``data_dir``, never loose in the working directory."""
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'reclaim.db'}"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.data_dir / 'mlflow.db'}"
        return self

    def make_data_folder(self, url: str) -> None:
        """Make the data folder where ``url`` is a SQLite store in it (a default store, made
        on first write); a store named elsewhere must have its folder (a missing one is more
        likely a typo than a wish)."""
        file = sqlite_file(url)
        if file is not None and file.parent.resolve() == self.data_dir.resolve():
            self.data_dir.mkdir(parents=True, exist_ok=True)

    def experiment_design(self) -> ExperimentDesign:
        """The experiment these settings describe."""
        segments = self.experiment_rollout or [
            Segment(name="all", treatment_share=1 - self.experiment_control_share)
        ]
        return ExperimentDesign(
            name=self.experiment_name, unit=self.experiment_unit, segments=segments
        )

    stripe_api_base: str | None = None
    """Another Stripe API address (the stand-in in tests); None means Stripe itself."""

    stripe_timeout_seconds: float = 30.0
    """How long a Stripe call may take before it counts as a timeout (and is retried under
    the same idempotency key)."""

    scoring_url: str = "http://127.0.0.1:8000"
    """Where the scheduler asks for decisions."""
    scoring_api_key: SecretStr | None = None
    """The scheduler's API key (role ``scheduler``). No default."""
    scheduler_workers: int = Field(default=8, ge=1, le=64)
    """Actions the scheduler carries out at once."""
    scheduler_lease_seconds: float = Field(default=15.0, gt=0)
    """How long a scheduler's leadership lasts unrenewed: a crashed leader's standby takes
    over after at most this long."""
    scheduler_metrics_port: int | None = None
    """Serve the scheduler's Prometheus metrics at this port (unset: off)."""
    scheduler_metrics_host: str = "127.0.0.1"
    """The address the scheduler's metrics listen on (``0.0.0.0`` in a container, for
    Prometheus to reach)."""
    clock_speed: float = Field(default=1.0, gt=0)
    """Simulated time runs this many times faster than the wall clock (demo and tests)."""
    clock_origin: datetime | None = None
    """The simulated time at ``clock_wall_origin``; unset means real time."""
    clock_wall_origin: datetime | None = None

    smtp_host: str = "localhost"
    smtp_port: int = 25
    email_from: str = "billing@platform.invalid"
    """From address of recovery emails where the branding names none."""
    message_webhook_url: str | None = None
    """Where SMS and in-app messages are posted for the platform to deliver."""
    message_webhook_secret: SecretStr | None = None
    """Signs those posts. No default."""

    def stripe_client(self, max_network_retries: int = 0):  # -> stripe.StripeClient
        """A ``StripeClient`` for these settings; raises ValueError naming the missing key."""
        import stripe

        if self.stripe_api_key is None or not self.stripe_api_key.get_secret_value():
            raise ValueError("RECLAIM_STRIPE_API_KEY is not set: the platform's secret key")
        return stripe.StripeClient(
            self.stripe_api_key.get_secret_value(),
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=self.stripe_timeout_seconds),
            base_addresses={"api": self.stripe_api_base} if self.stripe_api_base else None,
        )


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store's URL (``sqlite:///path/to.db``, SQLAlchemy's and MLflow's
    form), or None for an in-memory SQLite store and any other kind of store."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
