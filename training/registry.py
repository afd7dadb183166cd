"""The policy's versions in the MLflow model registry: which is champion, promoting one, and
rolling back to the one before.

A promotion tags the new champion with the version it replaced (``previous_champion``), so a
rollback needs no memory but the registry's: ``reclaim models rollback`` moves the champion
alias back to that version. The API follows the alias within ``RECLAIM_POLICY_RELOAD_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

MODEL_NAME = "reclaim-policy"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous_champion"


@dataclass(frozen=True)
class Version:
    """One registered version, as ``reclaim models list`` shows it."""

    version: str
    aliases: tuple[str, ...]
    gate: str
    whole_uplift: str
    created_ms: int


def champion(client: MlflowClient, name: str = MODEL_NAME) -> str | None:
    """The champion's version, or None."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def promote(client: MlflowClient, version: str, name: str = MODEL_NAME) -> str | None:
    """Make ``version`` the champion; returns the version it replaced (None: there was none).
    Raises LookupError for a version the registry does not hold."""
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise LookupError(f"no version {version} of {name} in the registry") from exc
    before = champion(client, name)
    if before == str(version):
        return before
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if before is not None:
        client.set_model_version_tag(name, str(version), PREVIOUS, before)
    return before


def rollback(client: MlflowClient, name: str = MODEL_NAME) -> tuple[str, str]:
    """Move the champion alias back to the version the champion replaced; returns (from, to).
    Raises LookupError when there is no champion or it replaced none."""
    now = champion(client, name)
    if now is None:
        raise LookupError(f"{name} has no champion to roll back")
    previous = client.get_model_version(name, now).tags.get(PREVIOUS)
    if not previous:
        raise LookupError(f"champion version {now} replaced no earlier champion")
    client.set_registered_model_alias(name, CHAMPION, previous)
    return now, previous


def versions(client: MlflowClient, name: str = MODEL_NAME) -> list[Version]:
    """Every version of ``name``, newest first."""
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(
        (
            Version(str(v.version), tuple(v.aliases or ()), v.tags.get("gate", ""),
                    v.tags.get("whole_uplift", ""), int(v.creation_timestamp or 0))
            for v in found
        ),
        key=lambda v: -int(v.version),
    )  # fmt: skip
