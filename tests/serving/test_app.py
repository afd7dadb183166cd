"""The API app: health, readiness, metrics, webhook routes, OpenAPI."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import stripe
from fastapi.testclient import TestClient
from pydantic import SecretStr

from reclaim.serving.app import create_app
from reclaim.settings import Settings

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stripe"


def _settings(tmp_path: Path, **overrides) -> Settings:
    values = dict(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'none.db'}",
        stripe_webhook_secret_platform=SecretStr("whsec_platform"),
        stripe_webhook_secret_connect=SecretStr("whsec_connect"),
        policy_reload_seconds=3600,
    )
    return Settings(**{**values, **overrides})


def _signed(name: str, secret: str) -> tuple[bytes, str]:
    body = json.dumps(json.loads((FIXTURES / f"{name}.json").read_text())).encode()
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(time.time())
    )
    return body, header


def test_health_readiness_and_metrics_without_a_policy(tmp_path) -> None:
    with TestClient(create_app(_settings(tmp_path))) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert (
            "no policy loaded from models:/reclaim-policy@champion" in ready.json()["problems"][0]
        )
        text = client.get("/metrics").text
        assert 'reclaim_http_requests_total{method="GET",route="/readyz",status="503"} 1.0' in text


def test_ready_once_the_champion_is_loaded(tmp_path, trained) -> None:
    settings = _settings(tmp_path, mlflow_tracking_uri=trained.tracking_uri)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["policy_version"] == "1"
        # another writer holds the store: reads answer, writes would wait, so not ready
        holder = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
        try:
            holder.execute("BEGIN IMMEDIATE")
            blocked = client.get("/readyz")
            assert blocked.status_code == 503, blocked.json()
            assert "store writes blocked" in blocked.json()["problems"][0]
        finally:
            holder.rollback()
            holder.close()
        assert client.get("/readyz").status_code == 200


def test_webhook_routes_verify_with_their_own_secret(tmp_path, stripe_api) -> None:
    stripe_settings = {
        "stripe_api_key": SecretStr(stripe_api.api_key),
        "stripe_api_base": stripe_api.url,
    }
    with TestClient(create_app(_settings(tmp_path, **stripe_settings))) as client:
        body, header = _signed("destination_pi_generic_decline", "whsec_platform")
        ok = client.post(
            "/v1/webhooks/stripe/platform", content=body, headers={"Stripe-Signature": header}
        )
        assert ok.status_code == 200 and ok.json()["status"] == "processed"
        again = client.post(
            "/v1/webhooks/stripe/platform", content=body, headers={"Stripe-Signature": header}
        )
        assert again.json()["status"] == "duplicate"
        # the Connect endpoint's secret does not verify a platform-signed delivery
        wrong = client.post(
            "/v1/webhooks/stripe/connect", content=body, headers={"Stripe-Signature": header}
        )
        assert (
            wrong.status_code == 400 and "signature verification failed" in wrong.json()["detail"]
        )
        unsigned = client.post("/v1/webhooks/stripe/platform", content=body)
        assert unsigned.status_code == 400
        metrics = client.get("/metrics").text
        series = (
            'reclaim_webhook_events_total{endpoint="platform",result="processed",'
            'type="payment_intent.payment_failed"} 1.0'
        )
        assert series in metrics


def test_webhooks_refuse_to_run_without_their_secret(tmp_path) -> None:
    settings = _settings(tmp_path, stripe_webhook_secret_connect=None)
    with TestClient(create_app(settings)) as client:
        body, header = _signed("direct_invoice_insufficient_funds", "whsec_connect")
        response = client.post(
            "/v1/webhooks/stripe/connect", content=body, headers={"Stripe-Signature": header}
        )
        assert response.status_code == 503
        assert "RECLAIM_STRIPE_WEBHOOK_SECRET_CONNECT" in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/webhooks/stripe/platform",
        "/v1/webhooks/stripe/connect",
        "/v1/decisions",
        "/v1/decisions/batch",
        "/v1/payments/{payment_id}",
    ],
)
def test_openapi_describes_every_route(tmp_path, path) -> None:
    schema = create_app(_settings(tmp_path)).openapi()
    assert path in schema["paths"]
    for operation in schema["paths"][path].values():
        assert operation.get("summary")


def test_keys_create_prints_a_working_key(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from reclaim.cli import app
    from reclaim.serving.auth import authenticate
    from reclaim.serving.store.repository import make_engine
    from reclaim.settings import get_settings

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("RECLAIM_DATABASE_URL", url)
    get_settings.cache_clear()
    result = CliRunner().invoke(
        app, ["keys", "create", "--role", "scheduler", "--account", "acct_1"]
    )
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    principal = authenticate(make_engine(url), key)
    assert principal.role == "scheduler" and principal.accounts == frozenset({"acct_1"})


def test_the_policy_reloads_when_the_alias_moves_without_dropping_a_request(
    tmp_path, trained, inline_payment
) -> None:
    """A second version is registered and made champion while requests keep coming: every
    request is answered, and the answers switch to the new version."""
    import shutil
    import threading

    from mlflow import MlflowClient

    from reclaim.serving.auth import create_key
    from reclaim.training.pipeline import MODEL_NAME

    # a copy of the registry, so the session's champion stays version 1 for other tests
    db = tmp_path / "mlflow.db"
    shutil.copy(trained.tracking_uri.removeprefix("sqlite:///"), db)
    uri = f"sqlite:///{db}"
    settings = _settings(tmp_path, mlflow_tracking_uri=uri, policy_reload_seconds=0.2)
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()
    with TestClient(create_app(settings)) as client:
        _, key = create_key(client.app.state.engine, "scheduler")
        body = {"payment": inline_payment(0), "now": "2026-05-20T14:00:00Z"}

        def hammer() -> None:
            while not stop.is_set():
                r = client.post(
                    "/v1/decisions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            registry = MlflowClient(uri, registry_uri=uri)
            v1 = registry.get_model_version_by_alias(MODEL_NAME, "champion")
            v2 = registry.create_model_version(MODEL_NAME, v1.source, run_id=v1.run_id)
            registry.set_registered_model_alias(MODEL_NAME, "champion", v2.version)
            deadline = time.monotonic() + 60
            while str(v2.version) not in versions and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # some requests after the swap too
        finally:
            stop.set()
            thread.join()
        assert client.get("/readyz").json()["policy_version"] == str(v2.version)
    # the versions are the store's: another test of this worker may have registered one
    assert versions == {str(v1.version), str(v2.version)}, versions
    assert statuses and set(statuses) == {200}, set(statuses)


def test_metrics_behind_a_token_when_one_is_set(tmp_path) -> None:
    settings = _settings(tmp_path, metrics_token=SecretStr("scrape-me-0123456789"))
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "RECLAIM_METRICS_TOKEN" in wrong.json()["detail"]
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
        assert ok.status_code == 200 and "reclaim_http_requests_total" in ok.text
        assert client.get("/healthz").status_code == 200  # the rest is as before
