"""Schemathesis against the live API (uvicorn on 127.0.0.1) on SQLite and on PostgreSQL: for
every operation in its own OpenAPI document, generated requests (valid and invalid) never get
a 5xx, and every answer matches the documented response schema. A bounded run: a fixed number
of examples per operation, derandomized so a failure repeats.

The schema cannot say "exactly one of payment or payment_id" or which dates are plausible, so
few generated decision bodies get past validation; ``test_api_properties.py`` sends mostly
valid bodies with one odd field each, and reaches the policy, the store and the log."""

from __future__ import annotations

import uuid

import pytest
import schemathesis

# imported here, at collection, not lazily by from_url while the live API's threads run:
# CPython 3.11's parser can fail with "AST constructor recursion depth mismatch" when pytest
# rewrites a module it imports beside running threads
import schemathesis.specs.openapi.schemas
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.settings import Settings

from .conftest import PG_URL, _free_port, _postgres_available, _serve

EXAMPLES = 40


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def live_api(request, tmp_path_factory, trained):
    """``(base_url, admin key)`` of a running API on a fresh store of either kind."""
    schema_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'store.db'}"
    else:
        reason = _postgres_available()
        if reason:
            pytest.skip(reason)
        schema_name = f"reclaim_fuzz_{uuid.uuid4().hex[:10]}"
        with sa.create_engine(PG_URL).begin() as conn:
            conn.execute(sa.text(f'create schema "{schema_name}"'))
        url = f"{PG_URL}?options=-csearch_path%3D{schema_name}"
    upgrade(url)
    engine = make_engine(url)
    _, admin = create_key(engine, "admin")
    port = _free_port()
    settings_ = Settings(
        database_url=url,
        mlflow_tracking_uri=trained.tracking_uri,
        stripe_webhook_secret_platform=SecretStr("whsec_fuzz_p"),
        stripe_webhook_secret_connect=SecretStr("whsec_fuzz_c"),
        policy_reload_seconds=3600,
    )
    server = _serve(create_app(settings_), port)
    try:
        yield f"http://127.0.0.1:{port}", admin
    finally:
        server.should_exit = True
        engine.dispose()
        if schema_name:
            with sa.create_engine(PG_URL).begin() as conn:
                conn.execute(sa.text(f'drop schema "{schema_name}" cascade'))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_gets_a_5xx_or_an_answer_off_its_schema(live_api, mode):
    base, admin = live_api
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:
            call = {
                "base_url": base,
                "headers": {"Authorization": f"Bearer {admin}"},
                "checks": [not_a_server_error, response_schema_conformance],
            }
            case.call_and_validate(**call)

        try:
            fuzz()
        except Unsatisfiable:  # nothing invalid to send (no parameters, or only free text)
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
