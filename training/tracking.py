"""The MLflow experiment a run is logged to, with its artifacts where the settings say."""

from __future__ import annotations

from reclaim.settings import sqlite_file


def use_experiment(name: str, artifact_uri: str | None = None) -> None:
    """Log the next runs to MLflow experiment ``name`` (of the current tracking store),
    creating it with its artifacts at ``artifact_uri`` when it does not exist yet. Without
    one, a SQLite store's experiment keeps its artifacts in ``mlruns`` beside the store (not
    MLflow's ``./mlruns`` of whatever folder the command ran in); a tracking server's, where
    the server says."""
    import mlflow

    store = sqlite_file(mlflow.get_tracking_uri())
    if artifact_uri is None and store is not None:
        artifact_uri = (store.parent / "mlruns").resolve().as_uri()
    if artifact_uri and mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=artifact_uri)
    mlflow.set_experiment(name)
