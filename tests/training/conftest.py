"""One small simulated history, trained once, with its own temporary MLflow store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from reclaim import contract
from reclaim.reference import RandomizedLogging
from reclaim.simulator import Marketplace, generate, rollout
from reclaim.training.pipeline import TrainConfig, TrainResult, train

ACCOUNTS, PAYMENTS, SEED = 40, 16_000, 5


@dataclass
class Trained:
    market: Marketplace
    data_dir: Path
    tracking_uri: str
    result: TrainResult


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("training")
    market = generate(ACCOUNTS, PAYMENTS, SEED)
    tables = rollout(market, RandomizedLogging(), seed=SEED).tables
    data_dir = root / "sim"
    contract.write_tables(tables, data_dir)
    (data_dir / "simulation.json").write_text(
        json.dumps({"accounts": ACCOUNTS, "payments": PAYMENTS, "seed": SEED})
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = train(data_dir, uri, TrainConfig(experiment="tests"))
    return Trained(market, data_dir, uri, result)
