"""Load benchmark of ``POST /v1/decisions`` under uvicorn on 127.0.0.1, driven by wrk from a
second process, next to an empty FastAPI endpoint served by the same processes in the same run.

Reports throughput and p50/p99 latency at 1, 16 and 64 concurrent clients (median of
``--repeats`` runs each), then the time of a 1,000-decision batch sent alone, and of such
batches while single decisions are asked on another connection, with those singles' latency.
Aims: decisions at least half the empty endpoint's throughput, p99 under 25 ms at 16 clients,
a 1,000-decision batch in under a second.

Every decision request carries a new payment's whole context (a failure the service has not
seen), so each one validates the input, stores the payment, scores 56 candidate retry times
and the channels, explains the chosen retry, and logs the decision to the store (SQLite, or
a fresh schema on the local PostgreSQL with ``--database postgresql``). ``--workers N`` serves
with N uvicorn worker processes, as ``reclaim serve --workers N`` does.

    make bench-tools   # installs wrk (Debian's package) if it is missing
    .venv/bin/python benchmarks/bench_api.py [--seconds 5] [--repeats 3]
    .venv/bin/python benchmarks/bench_api.py --workers 2 --database postgresql
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import PG_URL, postgres_schema

CONCURRENCY = (1, 16, 64)

# wrk's Lua: a new payment id per request (thread id + counter), the rest of the context fixed.
LUA = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  body_template = args[1]
  key = args[2]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end
function request()
  counter = counter + 1
  local body = string.gsub(body_template, "PAYMENT_ID", "in_bench_" .. tid .. "_" .. counter)
  return wrk.format(nil, nil, nil, body)
end
"""


def _payment(account_id: str) -> dict:
    return {
        "payment": {
            "payment_id": "PAYMENT_ID",
            "object": "invoice",
            "account_id": account_id,
            "charge_model": "destination",
            "amount": 4900,
            "currency": "usd",
            "customer_id": "cus_bench",
            "customer_country": "US",
            "customer_timezone": "America/Chicago",
            "card_brand": "visa",
            "card_funding": "debit",
            "card_country": "US",
            "billing_reason": "subscription_cycle",
            "failed_at": "2026-05-20T14:00:00Z",
            "decline_code": "insufficient_funds",
            "advice_code": "try_again_later",
            "network_decline_code": "51",
        },
        "now": "2026-05-20T14:00:00Z",
    }


def bench_app():
    """The API plus an empty endpoint (each worker process builds its own)."""
    from reclaim.serving.app import create_app

    app = create_app()

    @app.post("/bench/empty", include_in_schema=False)
    def empty() -> dict:
        return {}

    return app


def serve(port: int, workers: int) -> None:
    """Serve :func:`bench_app` with ``workers`` processes until killed."""
    import uvicorn

    uvicorn.run(
        "bench_api:bench_app",
        factory=True,
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(folder: Path, database: str | None = None) -> tuple[dict[str, str], str, str]:
    """Simulate and train a policy into ``folder``; returns the server's environment (its
    store ``database``, default SQLite in ``folder``), a scheduler key and an account id."""
    from reclaim import contract
    from reclaim.reference import RandomizedLogging
    from reclaim.serving.auth import create_key
    from reclaim.serving.store.migrate import upgrade
    from reclaim.serving.store.repository import make_engine
    from reclaim.simulator import generate, rollout
    from reclaim.training.pipeline import TrainConfig, train

    market = generate(40, 16_000, seed=5)
    contract.write_tables(rollout(market, RandomizedLogging(), seed=5).tables, folder / "sim")
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    train(folder / "sim", tracking, TrainConfig(experiment="bench"))
    database = database or f"sqlite:///{folder / 'api.db'}"
    upgrade(database)
    _, key = create_key(make_engine(database), "scheduler")
    env = {
        **os.environ,
        "RECLAIM_DATABASE_URL": database,
        "RECLAIM_MLFLOW_TRACKING_URI": tracking,
        "RECLAIM_POLICY_RELOAD_SECONDS": "3600",
        "RECLAIM_LOG_LEVEL": "WARNING",
    }
    return env, key, str(market.payments["account_id"].iloc[0])


def _wait_ready(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API at {base} was not ready within {timeout:.0f} s")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, clients: int, seconds: int, script: Path, args: list[str]) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--latency"]
        + ["--timeout", "60s"]
        + ["-s", str(script), url, "--", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pct = {
        p: float(v) * _UNITS[u]
        for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if not re.search(r"^\s+[1-9]\d* requests in", out, re.M):
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan")}  # none finished in time
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed responses from {url}:\n{out}")
    if "Socket errors" in out:
        raise RuntimeError(f"connection errors or timeouts from {url}:\n{out}")
    return {"rps": rps, "p50": pct["50"], "p99": pct["99"]}


def _batch_figures(base: str, key: str, account: str, repeats: int) -> dict[str, float]:
    """Median time of a 1,000-decision batch of new payments sent alone; then the median
    time of such batches while single decisions are sent on another connection, and those
    singles' latency."""
    import threading

    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    template = json.dumps(_payment(account))

    def body(tag: str) -> dict:
        return json.loads(template.replace("PAYMENT_ID", tag))

    singles: list[float] = []
    done = threading.Event()

    def ask_singles() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            n = 0
            while not done.is_set():
                n += 1
                start = time.perf_counter()
                client.post("/v1/decisions", json=body(f"in_single_{n}")).raise_for_status()
                singles.append(1000 * (time.perf_counter() - start))
                time.sleep(0.02)

    def batches(client: httpx.Client, tag: str) -> list[float]:
        times = []
        for r in range(repeats):
            # the body is encoded before the clock starts: the client's work is not the API's
            content = json.dumps(
                {"decisions": [body(f"in_batch_{tag}_{r}_{i}") for i in range(1000)]}
            ).encode()
            start = time.perf_counter()
            client.post(
                "/v1/decisions/batch",
                content=content,
                headers={"Content-Type": "application/json"},
            ).raise_for_status()
            times.append(time.perf_counter() - start)
        return times

    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        alone = batches(client, "alone")
        side = threading.Thread(target=ask_singles)
        side.start()
        together = batches(client, "with_singles")
        done.set()
        side.join()
    return {
        "batch_s": statistics.median(alone),
        "batch_with_singles_s": statistics.median(together),
        "single_p50": statistics.median(singles),
        "single_max": max(singles),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help=f"the store: SQLite in a temporary folder, or a fresh schema at {PG_URL}",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.workers)
        return
    if shutil.which("wrk") is None:
        sys.exit("bench_api needs wrk: run `make bench-tools` (Debian's wrk package)")

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as store:
        folder = Path(tmp)
        print("preparing: simulating 16,000 payments and training a policy ...", flush=True)
        database = store.enter_context(postgres_schema()) if args.database == "postgresql" else None
        env, key, account = _prepare(folder, database)
        if args.workers > 1:  # /metrics sums the workers (reclaim serve does the same)
            (folder / "metrics").mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), "--workers", str(args.workers)],
            env=env,
        )
        try:
            _wait_ready(base)
            script = folder / "post.lua"
            script.write_text(LUA)
            body = json.dumps(_payment(account))
            targets = {
                "empty endpoint": (f"{base}/bench/empty", ["{}", key]),
                "POST /v1/decisions": (f"{base}/v1/decisions", [body, key]),
            }
            _wrk(targets["POST /v1/decisions"][0], 4, 2, script, targets["POST /v1/decisions"][1])
            results: dict[tuple[str, int], dict] = {}
            for clients in CONCURRENCY:
                for name, (url, wrk_args) in targets.items():
                    runs = [
                        _wrk(url, clients, args.seconds, script, wrk_args)
                        for _ in range(args.repeats)
                    ]
                    results[name, clients] = {
                        k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")
                    }
            batch = _batch_figures(base, key, account, args.repeats)
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
                exposed = r.read().decode()
            calls = {
                k: float(v)
                for k, v in re.findall(r"^reclaim_decision_batch_size_(sum|count) (\S+)$",
                                       exposed, re.M)
            }  # fmt: skip
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()

    print(
        f"\nAPI load benchmark: uvicorn ({args.workers} worker{'s' * (args.workers > 1)}) on "
        f"127.0.0.1, store {'PostgreSQL' if args.database == 'postgresql' else 'SQLite'}, wrk "
        f"from a second process, {os.cpu_count()} cores; median of {args.repeats} runs of "
        f"{args.seconds} s"
    )
    print(f"{'clients':>7}  {'endpoint':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for clients in CONCURRENCY:
        for name in targets:
            r = results[name, clients]
            print(f"{clients:>7}  {name:<20} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}")
        ratio = (
            results["POST /v1/decisions", clients]["rps"]
            / results["empty endpoint", clients]["rps"]
        )
        print(f"{'':>7}  decisions / empty throughput: {ratio:.2f} (aim >= 0.5)")
    p99 = results["POST /v1/decisions", 16]["p99"]
    print(f"p99 of decisions at 16 clients: {p99:.1f} ms (aim < 25 ms)")
    print(
        f"decisions per model call over the whole run: {calls['sum'] / calls['count']:.1f} "
        f"({calls['count']:.0f} calls; requests waiting together are decided together)"
    )
    print(
        f"1,000-decision batch alone: median {batch['batch_s']:.2f} s of {args.repeats} "
        f"(aim < 1 s); with single decisions asked meanwhile on another connection: "
        f"{batch['batch_with_singles_s']:.2f} s, the singles median "
        f"{batch['single_p50']:.1f} ms, slowest {batch['single_max']:.1f} ms"
    )


if __name__ == "__main__":
    main()
