"""Settings from the environment (prefix ``RECLAIM_``) or a ``.env`` file, in one class.

Secrets (Stripe keys, webhook signing secrets) arrive with the serving issue and will have no
defaults; everything here has an embedded default that needs no set-up.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Reclaim's settings. Each field reads ``RECLAIM_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="RECLAIM_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    """Where commands write contract tables by default."""
    database_url: str = "sqlite:///reclaim.db"
    """The operational store (SQLite embedded; PostgreSQL in production)."""
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    """MLflow tracking store."""
    log_level: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
