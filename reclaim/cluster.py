"""A Dask cluster for the batch jobs that spread over processes (``reclaim train --dask``,
``reclaim simulate --dask``, ``reclaim evaluate --simulator --dask``)."""

from __future__ import annotations

import logging
from typing import Any


def connect(address: str, workers: int = 2, memory_limit: str = "4GiB") -> Any:
    """A ``distributed.Client``: of the scheduler at ``address``, or, for ``local``, of a new
    ``LocalCluster`` of ``workers`` processes with one thread and ``memory_limit`` each.

    Closing the client of a ``local`` cluster stops its workers."""
    from distributed import Client

    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)  # a note per shuffle
    if address == "local":
        return Client(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
        )
    return Client(address)


def worker_count(client: Any) -> int:
    """How many workers ``client``'s scheduler has now (at least 1)."""
    return max(1, len(client.scheduler_info()["workers"]))
