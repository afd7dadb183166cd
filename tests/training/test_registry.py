"""Issue 29: the champion promoted by hand and rolled back to the version it replaced, in a
real MLflow store, by the functions and by the CLI."""

from __future__ import annotations

import shutil

from mlflow import MlflowClient
from typer.testing import CliRunner

from reclaim.cli import app
from reclaim.training import registry


def test_promote_then_roll_back_to_the_champion_replaced(tmp_path, trained) -> None:
    store = tmp_path / "mlflow.db"
    shutil.copy2(trained.tracking_uri.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    client = MlflowClient(uri)
    first = registry.champion(client)
    assert first is not None
    source = client.get_model_version(registry.MODEL_NAME, first)
    second = client.create_model_version(
        registry.MODEL_NAME, source.source, run_id=source.run_id
    ).version  # the same model again: a second version to promote

    cli = CliRunner()
    promoted = cli.invoke(app, ["models", "promote", str(second), "--tracking-uri", uri])
    assert promoted.exit_code == 0, promoted.output
    assert f"champion: version {second} (was {first})" in promoted.output
    assert registry.champion(client) == str(second)
    listed = cli.invoke(app, ["models", "list", "--tracking-uri", uri])
    assert listed.exit_code == 0 and "champion" in listed.output, listed.output

    back = cli.invoke(app, ["models", "rollback", "--tracking-uri", uri])
    assert back.exit_code == 0, back.output
    assert f"version {first} (was {second})" in back.output
    assert registry.champion(client) == first
    # the first champion replaced none: nothing further back, said in one line
    again = cli.invoke(app, ["models", "rollback", "--tracking-uri", uri])
    assert again.exit_code == 2 and "replaced no earlier champion" in again.output
    missing = cli.invoke(app, ["models", "promote", "99", "--tracking-uri", uri])
    assert missing.exit_code == 2 and "no version 99" in missing.output
    assert registry.champion(client) == first
