"""The MLflow experiment a run is logged to, with its artifacts where the settings say."""

from __future__ import annotations


def use_experiment(name: str, artifact_uri: str | None = None) -> None:
    """Log the next runs to MLflow experiment ``name`` (of the current tracking store),
    creating it with its artifacts at ``artifact_uri`` when it does not exist yet (default:
    the tracking store's own choice, ``./mlruns`` for a SQLite store)."""
    import mlflow

    if artifact_uri and mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=artifact_uri)
    mlflow.set_experiment(name)
