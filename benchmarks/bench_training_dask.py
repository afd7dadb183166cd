"""`reclaim train` on 5,000,000 attempts in one process and with `--dask local` (2 workers),
each process under the same memory limit: wall time, peak memory per process, and whether it
fit.

The history is simulated in chunks (each chunk a marketplace of 1,000 accounts with its own
seed, so 5,000,000 attempts are ~1,060,000 payments of ~5,000 accounts) and appended to one
Parquet file per table, row group by row group. Each run then starts in a fresh process, and
every process of it (the driver and Dask's workers) is held to ``--limit-gib`` of resident
memory by a watchdog that stops the run when one goes over (RLIMIT_DATA/RLIMIT_AS would count
the address space pyarrow's and glibc's allocators reserve, not memory used); Dask's own
``memory_limit`` per worker is set to the same.

    .venv/bin/python benchmarks/bench_training_dask.py [--attempts N] [--limit-gib G]
        [--workers W] [--data FOLDER]   # --data keeps (or reuses) the simulated tables
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTEMPTS_PER_PAYMENT = 4.7  # the randomized logging policy's, measured (bench_training.py)
CHUNK_PAYMENTS = 100_000


def simulate(folder: Path, attempts: int) -> None:
    """Append chunks of simulated history to ``folder``'s contract Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reclaim import contract
    from reclaim.reference import RandomizedLogging
    from reclaim.simulator import generate, rollout

    folder.mkdir(parents=True, exist_ok=True)
    payments = int(attempts / ATTEMPTS_PER_PAYMENT)
    writers: dict[str, pq.ParquetWriter] = {}
    written, seed = 0, 100
    try:
        while written < payments:
            n = min(CHUNK_PAYMENTS, payments - written)
            tables = rollout(generate(1_000, n, seed=seed), RandomizedLogging(), seed=seed).tables
            for table in contract.TABLES:
                schema = table.arrow_schema()
                frame = getattr(tables, table.name)
                arrow = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                if table.name not in writers:
                    writers[table.name] = pq.ParquetWriter(folder / table.file, schema)
                writers[table.name].write_table(arrow)
            written += n
            seed += 1
            print(f"  simulated {written:,} / {payments:,} payments", flush=True)
    finally:
        for w in writers.values():
            w.close()


def measure(folder: str, mode: str, workers: int, limit_gib: float) -> None:
    """One run of ``reclaim train``; prints a JSON line of what it measured."""
    import pyarrow.parquet as pq

    from reclaim.training.pipeline import TrainConfig, train

    client = None
    if mode == "dask":
        from reclaim.training.distributed import connect

        client = connect("local", workers, f"{limit_gib}GiB")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            Path(folder), f"sqlite:///{tmp}/mlflow.db", TrainConfig(experiment="bench"), dask=client
        )
    seconds = time.perf_counter() - start
    peaks = {"driver": _peak_mib()}
    if client is not None:
        for i, (_, mib) in enumerate(sorted(client.run(_peak_mib).items())):
            peaks[f"worker {i + 1}"] = mib
        client.close()
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "peak_mib": peaks,
                "retry_auc": result.metrics["retry_auc"],
                "retry_trees": result.metrics["retry_trees"],
                "attempts": pq.ParquetFile(Path(folder) / "attempts.parquet").metadata.num_rows,
            }
        ),
        flush=True,
    )


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tree(pid: int) -> list[int]:
    """``pid`` and every process under it (read from /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(folder: Path, mode: str, workers: int, limit_gib: float) -> dict:
    """A fresh process (and the workers it starts), each held to ``limit_gib`` of resident
    memory: a watchdog reads every process's RSS five times a second and stops the whole run
    when one goes over, as an out-of-memory killer would. What the run printed, or how it
    ended."""
    limit_mib = limit_gib * 1024
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--measure",
                mode,
                "--workers",
                str(workers),
                "--limit-gib",
                str(limit_gib),
                str(folder),
            ],
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        over = None
        while proc.poll() is None:
            for pid in _tree(proc.pid):
                rss = _rss_mib(pid)
                if rss > limit_mib:
                    over = (pid, rss)
            if over:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if over:
        who = "the process" if over[0] == proc.pid else f"a child process ({over[0]})"
        return {
            "failed": f"{who} went over {limit_gib:g} GiB ({over[1]:,.0f} MiB resident)",
            "seconds": seconds,
        }
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    why = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    return {"failed": f"exit {proc.returncode}: {why[:200]}", "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=5_000_000)
    parser.add_argument("--limit-gib", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, help="keep the simulated tables here (reused)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("folder", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.folder, args.measure, args.workers, args.limit_gib)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp) / "sim"
        if not (folder / "attempts.parquet").exists():
            print(f"simulating {args.attempts:,} attempts into {folder}", flush=True)
            simulate(folder, args.attempts)
        print(f"reclaim train, each process held to {args.limit_gib:g} GiB resident:")
        results = {
            "one process": run(folder, "single", args.workers, args.limit_gib),
            f"--dask local ({args.workers} workers)": run(
                folder, "dask", args.workers, args.limit_gib
            ),
        }
    for name, r in results.items():
        if "failed" in r:
            print(f"  {name:28s} stopped after {r['seconds']:.0f} s: {r['failed']}")
            continue
        peaks = ", ".join(f"{k} {v:,.0f} MiB" for k, v in r["peak_mib"].items())
        print(
            f"  {name:28s} {r['seconds']:6.0f} s on {r['attempts']:,} attempts; retry AUC "
            f"{r['retry_auc']:.4f} ({r['retry_trees']:.0f} trees); peak memory: {peaks}"
        )


if __name__ == "__main__":
    main()
