"""Can a key tell another account's payment id from an id nobody holds by the time the API
takes? And does one long dashboard request slow ``/healthz``?

Serves the API (``reclaim serve``, SQLite) over a store of ``--payments`` simulated payments,
then asks, with a key scoped to an account that holds none of them, ``GET /v1/payments/{id}``
for ids another account holds and for ids nobody holds, interleaved with ``/healthz`` (the
reference measured in the same run), ``--rounds`` times each; prints the medians and the
foreign − missing difference with its 95% bootstrap interval (issue 27 measured 42 ms against
24 ms). Then it builds the dashboard over 2000–2999 (cut to three years) while polling
``/healthz``, and prints the page's time and the health checks' median and largest latency.

    .venv/bin/python benchmarks/bench_tenancy.py [--payments 20000] [--rounds 400]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from reclaim import contract
from reclaim.serving.auth import create_key
from reclaim.serving.store import repository as repo
from reclaim.serving.store.migrate import upgrade
from reclaim.simulator import generate


def _ms(client: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    client.get(path)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="reclaim-bench-tenancy-"))
    url = f"sqlite:///{folder / 'store.db'}"
    upgrade(url)
    engine = repo.make_engine(url)
    market = generate(200, args.payments, seed=11)
    payments = market.payments
    repo.save_contract(
        engine,
        contract.ContractTables(
            payments, contract.first_failures(payments), contract.empty(contract.MESSAGES)
        ),
    )
    _, scoped = create_key(engine, "analyst", ["acct_holds_none"])
    _, analyst = create_key(engine, "analyst")
    engine.dispose()
    with socket.socket() as free:  # a port nobody uses
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "RECLAIM_DATABASE_URL": url, "RECLAIM_LOG_LEVEL": "WARNING",
           "RECLAIM_MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
           "RECLAIM_DASHBOARD_SECURE_COOKIES": "false"}  # fmt: skip
    reclaim = Path(sys.executable).with_name("reclaim")
    server = subprocess.Popen(
        [str(reclaim), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        foreign = list(payments["payment_id"].sample(args.rounds, random_state=1))
        times: dict[str, list[float]] = {"healthz": [], "foreign": [], "missing": []}
        headers = {"Authorization": f"Bearer {scoped}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for i, pid in enumerate(foreign):
                times["healthz"].append(_ms(client, "/healthz"))
                times["foreign"].append(_ms(client, f"/v1/payments/{pid}"))
                times["missing"].append(_ms(client, f"/v1/payments/in_nobody_{i}"))
        print(f"{args.payments:,} payments stored; {args.rounds} requests of each, medians:")
        for name, values in times.items():
            print(f"  {name:8s} {statistics.median(values):6.2f} ms")
        diff = np.array(times["foreign"]) - np.array(times["missing"])
        rng = np.random.default_rng(0)
        boots = [np.median(rng.choice(diff, diff.size)) for _ in range(2000)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        print(f"  foreign − missing: {np.median(diff):+.2f} ms (95% CI {lo:+.2f} to {hi:+.2f})")

        with httpx.Client(base_url=base, timeout=120) as browser:
            form = browser.get("/dashboard/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
            browser.post("/dashboard/login", data={"csrf": csrf, "key": analyst})
            health: list[float] = []
            done = threading.Event()

            def poll() -> None:
                with httpx.Client(base_url=base, timeout=60) as c:
                    while not done.is_set():
                        health.append(_ms(c, "/healthz"))

            poller = threading.Thread(target=poll)
            poller.start()
            for period in ("2000-01-01&end=2999-12-31", "2024-01-01&end=2026-12-30"):
                health.clear()
                while not health:  # the poller runs before the page is asked for
                    time.sleep(0.01)
                start = time.perf_counter()
                page = browser.get(f"/dashboard?start={period}")
                took = time.perf_counter() - start
                assert page.status_code == 200, page.text[:300]
                checks = list(health)
                print(
                    f"dashboard {period.replace('&end=', ' to ')}: {len(page.content):,} bytes "
                    f"in {took:.2f} s; /healthz meanwhile: {len(checks)} checks, median "
                    f"{statistics.median(checks):.1f} ms, largest {max(checks):.1f} ms"
                )
            done.set()
            poller.join()
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
