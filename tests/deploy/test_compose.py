"""Issue 29: compose.yaml, the Dockerfile, .env.example and the alert rules are valid and
agree with the code: every command exists in the CLI, every RECLAIM_* variable is a setting,
every required setting is set, every metric an alert reads exists. (Containers cannot be
built on these machines: tests/deploy/test_topology.py runs the same commands as processes.)"""

from __future__ import annotations

import re

import click
import typer.main
import yaml

from reclaim.cli import app
from reclaim.serving.metrics import Metrics, SchedulerMetrics
from reclaim.settings import Settings

from . import compose

ENV = {"POSTGRES_USER": "reclaim", "POSTGRES_PASSWORD": "secret"}
#: What each command cannot run without (beyond what compose.yaml sets): the runbook's list.
REQUIRED = {
    "serve": {"RECLAIM_STRIPE_API_KEY", "RECLAIM_STRIPE_WEBHOOK_SECRET_PLATFORM",
              "RECLAIM_STRIPE_WEBHOOK_SECRET_CONNECT", "RECLAIM_DASHBOARD_SESSION_SECRET"},
    "scheduler": {"RECLAIM_STRIPE_API_KEY", "RECLAIM_SCORING_API_KEY"},
}  # fmt: skip


def _commands() -> click.Group:
    return typer.main.get_command(app)


def _settings_env() -> set[str]:
    return {f"RECLAIM_{name.upper()}" for name in Settings.model_fields}


def test_every_service_runs_a_real_command_with_real_settings() -> None:
    spec = compose.load()
    cli = _commands()
    assert compose.entrypoint() == ["reclaim"]
    ran = set()
    for name in spec["services"]:
        svc = compose.service(spec, name, ENV)
        if svc.argv[:1] != ["reclaim"]:
            continue
        command = cli.commands.get(svc.argv[1])
        assert command is not None, f"{name}: reclaim has no command {svc.argv[1]!r}"
        # the options parse as the CLI parses them (no unknown option, no bad value)
        ctx = command.make_context(svc.argv[1], svc.argv[2:], resilient_parsing=False)
        assert ctx.params is not None
        ran.add(svc.argv[1])
        for key in svc.environment:
            if key.startswith("RECLAIM_"):
                assert key in _settings_env(), f"{name}: {key} is not a setting"
        for key in REQUIRED.get(svc.argv[1], set()):
            assert key in svc.environment or (svc.env_file and key in compose.env_example()[0]), (
                f"{name} needs {key}"
            )
    assert {"serve", "scheduler", "migrate", "train"} <= ran
    # two schedulers (a leader and a standby), an MLflow server with served artifacts
    schedulers = [n for n in spec["services"]
                  if compose.service(spec, n, ENV).argv[1:2] == ["scheduler"]]  # fmt: skip
    assert len(schedulers) == 2
    mlflow = compose.service(spec, "mlflow", ENV).argv
    assert mlflow[:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow
    assert "postgresql" in mlflow[mlflow.index("--backend-store-uri") + 1]


def test_the_env_example_names_every_setting_and_leaves_no_secret_filled() -> None:
    given, named = compose.env_example()
    missing = _settings_env() - named
    assert not missing, f".env.example does not name {sorted(missing)}"
    assert not {n for n in named if n.startswith("RECLAIM_")} - _settings_env()
    for secret in ("RECLAIM_STRIPE_API_KEY", "RECLAIM_DASHBOARD_SESSION_SECRET",
                   "POSTGRES_PASSWORD"):  # fmt: skip
        assert given.get(secret, None) == "", secret
    # without a password, compose refuses to start (never a default password)
    try:
        compose.service(compose.load(), "migrate", {})
    except compose.MissingVariable as exc:
        assert "POSTGRES_PASSWORD" in str(exc)
    else:
        raise AssertionError("compose.yaml starts without POSTGRES_PASSWORD")


def test_the_dockerfile_builds_from_the_projects_files_and_runs_unprivileged() -> None:
    text = compose.DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all(s.startswith("python:3.11-slim") for s in stages)
    assert re.search(r"^USER reclaim$", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    copied = set(re.findall(r"^COPY (\w+)/ ", text, re.M))
    packaged = {"reclaim", "features", "models", "training", "serving", "simulator", "replay"}
    assert copied == packaged, copied ^ packaged
    assert "pip install --no-cache-dir --no-index --find-links /wheels reclaim" in text


def test_every_alert_reads_metrics_that_exist() -> None:
    rules = yaml.safe_load((compose.ROOT / "deploy" / "alerts.yml").read_text())
    exposed = set()
    for registry in (Metrics().registry, SchedulerMetrics().registry):
        for family in registry.collect():
            exposed |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert {
        "ReclaimWebhookBacklog",
        "ReclaimWebhookDeadLetters",
        "ReclaimRetriesLate",
        "ReclaimNoSchedulerLeads",
        "ReclaimDecisionErrors",
        "ReclaimFeatureSkew",
    } <= names
    runbook = (compose.ROOT / "docs" / "deploy.md").read_text()
    for alert in alerts:
        used = set(re.findall(r"\b(reclaim_[a-z_]+)", alert["expr"]))
        assert used and used <= exposed, (alert["alert"], used - exposed)
        assert alert["alert"] in runbook, f"docs/deploy.md does not explain {alert['alert']}"
