"""Shared, seeded fixtures: a small simulated marketplace and its logged history, and one
small trained policy in its own temporary MLflow store (built only when a test asks)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from reclaim import contract
from reclaim.reference import RandomizedLogging
from reclaim.simulator import Marketplace, Rollout, generate, rollout
from reclaim.training.pipeline import TrainConfig, TrainResult, train

warnings.filterwarnings("error", category=FutureWarning, module="reclaim")


@pytest.fixture(scope="session")
def market() -> Marketplace:
    """2,000 failed payments over 40 accounts (seed 11)."""
    return generate(40, 2_000, seed=11)


@pytest.fixture(scope="session")
def history(market: Marketplace) -> Rollout:
    """The randomized logging policy rolled out on :func:`market`."""
    return rollout(market, RandomizedLogging(), seed=11)


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
