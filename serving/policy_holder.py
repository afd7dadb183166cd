"""The policy the API serves: loaded from the MLflow registry, swapped when the alias moves.

A swap replaces one reference, so a request in flight finishes with the policy it started with
and no request is ever dropped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A loaded policy and the registry version it came from."""

    policy: Any
    version: str


class PolicyHolder:
    """Holds the current policy; :meth:`refresh` loads it, or reloads it if the alias moved."""

    def __init__(self, uri: str, tracking_uri: str):
        self.uri = uri
        self.tracking_uri = tracking_uri
        self.current: Loaded | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _version(self) -> str:
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        name, _, ref = self.uri.removeprefix("models:/").partition("@")
        if ref:
            return str(client.get_model_version_by_alias(name, ref).version)
        name, _, version = self.uri.removeprefix("models:/").partition("/")
        return version

    def refresh(self) -> bool:
        """Load the policy if there is none or the alias points elsewhere; True if swapped."""
        import mlflow

        try:
            version = self._version()
            if self.current is not None and self.current.version == version:
                return False
            mlflow.set_tracking_uri(self.tracking_uri)
            name = self.uri.removeprefix("models:/").partition("@")[0].partition("/")[0]
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            loaded = Loaded(model.unwrap_python_model().policy, version)
        except Exception as exc:  # not ready yet; keep serving what we have
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("policy %s not loaded: %s", self.uri, self.error)
            return False
        with self._lock:
            self.current = loaded
            self.error = None
        log.info("serving policy %s version %s", self.uri, version)
        return True

    def watch(self, every_seconds: float) -> threading.Thread:
        """Refresh in a background thread until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(every_seconds):
                self.refresh()

        thread = threading.Thread(target=loop, name="policy-reload", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
