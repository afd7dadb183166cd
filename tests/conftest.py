"""Shared, seeded fixtures: a small simulated marketplace and its logged history, and one
small trained policy in its own temporary MLflow store (built only when a test asks)."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from reclaim import contract
from reclaim.reference import RandomizedLogging
from reclaim.simulator import Marketplace, Rollout, generate, rollout
from reclaim.training.pipeline import TrainConfig, TrainResult, train

warnings.filterwarnings("error", category=FutureWarning, module="reclaim")

# `make test` runs one test process per core: LightGBM's threads would spin on the cores the
# other process needs, so each process (and what it starts) scores and trains on one thread
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("RECLAIM_LIGHTGBM_THREADS", "1")


#: The longest test files, handed out first (`make test` gives each worker a file at a time:
#: a long file handed out last keeps one core busy while the other has nothing left). Those
#: that need the shared trained policy alternate with those that do not, so the second worker
#: starts on work of its own while the first trains it.
SLOW_FIRST = (
    "deploy/test_topology.py",
    "training/test_ab_coverage.py",
    "replay/test_parity.py",
    "test_simulator_dask.py",
    "training/test_learned_policy.py",
    "training/test_ope.py",
    "replay/test_replay.py",
    "training/test_distributed.py",
    "serving/test_scheduler.py",
    "training/test_channel_choice.py",
    "training/test_own_export.py",
    "training/test_training.py",
    "replay/test_skew.py",
    "test_notebooks.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """:data:`SLOW_FIRST`'s files first, in its order; every other test after them, in the
    order collected (a stable sort: tests within a file keep their order)."""
    here = Path(__file__).parent
    rank = {name: k for k, name in enumerate(SLOW_FIRST)}

    def key(item) -> int:
        try:
            return rank.get(item.path.relative_to(here).as_posix(), len(rank))
        except ValueError:
            return len(rank)

    items.sort(key=key)


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """A command run in-process (typer's CliRunner) configures the process's logging as the
    CLI does (reclaim.logs): put it back after each test, so one test's INFO level and
    handlers do not slow or clutter the next."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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


def _train_into(root: Path) -> None:
    """Simulate, write and train into ``root`` (``sim/``, ``mlflow.db``, ``result.pkl``)."""
    market = generate(ACCOUNTS, PAYMENTS, SEED)
    tables = rollout(market, RandomizedLogging(), seed=SEED).tables
    data_dir = root / "sim"
    contract.write_tables(tables, data_dir)
    (data_dir / "simulation.json").write_text(
        json.dumps({"accounts": ACCOUNTS, "payments": PAYMENTS, "seed": SEED})
    )
    # the gate's rollout on 1,500 later payments: its evidence is ample here, the time is not
    config = TrainConfig(experiment="tests", max_rollout_payments=1_500)
    result = train(data_dir, f"sqlite:///{root / 'mlflow.db'}", config)
    (root / "result.pkl").write_bytes(pickle.dumps(result))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Trained:
    """The policy trained once for the whole run: the first test worker to ask trains it
    into a folder all workers share (under a lock; the others wait), and each worker works
    on its own copy of the data and the MLflow store, as if it had trained it itself (the
    same seed gives the same run)."""
    if worker_id == "master":  # not under xdist
        shared = tmp_path_factory.mktemp("trained-once")
    else:
        shared = tmp_path_factory.getbasetemp().parent / "trained-once"
    with open(shared.parent / "trained-once.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (shared / "result.pkl").exists():
                shared.mkdir(exist_ok=True)
                _train_into(shared)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    root = tmp_path_factory.mktemp("training")
    shutil.copytree(shared / "sim", root / "sim")
    shutil.copy2(shared / "mlflow.db", root / "mlflow.db")
    result = pickle.loads((shared / "result.pkl").read_bytes())
    market = generate(ACCOUNTS, PAYMENTS, SEED)
    return Trained(market, root / "sim", f"sqlite:///{root / 'mlflow.db'}", result)


@pytest.fixture(scope="module")
def dask_client():
    """A ``distributed.Client`` of a two-worker LocalCluster (one thread each), for a module."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client
