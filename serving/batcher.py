"""Dynamic batching of decisions: requests that arrive while a decision is being computed are
decided together, in one call.

Most of a decision's cost is fixed per call: a LightGBM call per model and a few statements
to the store, whether for one payment or fifty. So a single worker thread takes every group
of requests waiting (one API request's decisions are a group), up to ``max_batch`` decisions
in arrival order, resolves each group's payments to the accounts its key sees, decides the
admitted groups in one :func:`reclaim.serving.decide.decide` call and hands each group its
answers. Under load a process decides many times more payments per second; alone, a request
waits for nothing.

What batching must not change: a decision does not depend on its batch-mates (its randomness
is its own, :class:`reclaim.policy.DecisionRandom`); two groups naming the same payment are
never merged; and a group that fails (a foreign or unknown payment, an unexpected error)
fails alone: the others are decided again without it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from reclaim.serving import decide as domain
from reclaim.serving.auth import Principal
from reclaim.serving.schemas import DecisionOut, DecisionRequest

log = logging.getLogger(__name__)

Decide = Callable[[list[DecisionRequest]], list[DecisionOut]]
"""Decides a list of admitted requests, in order (the app binds the store and policy)."""

Holders = Callable[[list[str], "frozenset[str] | None"], dict[str, list[str]]]
"""The connected accounts holding each payment id that is stored (among the given accounts,
or all with None)."""


@dataclass
class _Group:
    requests: list[DecisionRequest]
    principal: Principal
    future: Future[list[DecisionOut]] = field(default_factory=Future)

    @property
    def ids(self) -> set[str]:
        return {r.id for r in self.requests}


class DecisionBatcher:
    """One worker thread deciding queued groups of requests in merged calls.

    ``decide`` and ``holders`` do the work (:func:`reclaim.serving.decide.decide` and
    :func:`reclaim.serving.store.repository.accounts_holding` bound to the store);
    ``max_batch`` caps the decisions merged into one call (a larger group is decided on its
    own).
    """

    def __init__(self, decide: Decide, holders: Holders, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._decide = decide
        self._holders = holders
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()
        self._held: _Group | None = None  # taken from the queue but left for the next call
        self._thread: threading.Thread | None = None
        self.on_batch: Callable[[int], None] = lambda n: None  # decisions per call (a metric)

    def start(self) -> DecisionBatcher:
        self._thread = threading.Thread(target=self._run, name="decision-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Decide what is queued, then end the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(
        self, requests: list[DecisionRequest], principal: Principal
    ) -> Future[list[DecisionOut]]:
        """Queue one group; its future gets the answers in order, or the group's error
        (:class:`~reclaim.serving.decide.UnknownPayment`,
        :class:`~reclaim.serving.decide.AmbiguousPayment`, or what deciding raised)."""
        if self._thread is None:
            raise RuntimeError("the decision batcher is not running")
        group = _Group(list(requests), principal)
        self._queue.put(group)
        return group.future

    async def decide(
        self, requests: list[DecisionRequest], principal: Principal
    ) -> list[DecisionOut]:
        """:meth:`submit`, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(requests, principal))

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping or self._held is not None:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                stopping = True
                continue
            groups = [first]
            stopping = self._gather(groups) or stopping
            try:
                self._decide_groups(groups)
            except BaseException as exc:  # never let the worker die with futures unanswered
                log.exception("the decision batcher failed")
                for g in groups:
                    if not g.future.done():
                        g.future.set_exception(exc)
        # anything queued after the stop signal: refuse rather than leave it waiting
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                return
            if late is not None:
                late.future.set_exception(RuntimeError("the API is shutting down"))

    def _gather(self, groups: list[_Group]) -> bool:
        """Add waiting groups to ``groups`` up to ``max_batch`` decisions, in arrival order,
        stopping at one that repeats a payment; True if the stop signal was met."""
        size = len(groups[0].requests)
        ids = groups[0].ids
        while size < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            if size + len(nxt.requests) > self.max_batch or ids & nxt.ids:
                self._held = nxt  # first in the next call: arrival order is kept
                return False
            groups.append(nxt)
            size += len(nxt.requests)
            ids |= nxt.ids
        return False

    def _decide_groups(self, groups: list[_Group]) -> None:
        admitted = []
        for g in groups:  # each key looks among its own accounts only
            try:
                held = self._holders(sorted(g.ids), g.principal.accounts)
                g.requests = domain.resolve(g.requests, held, g.principal.sees)
            except (domain.UnknownPayment, domain.AmbiguousPayment) as exc:
                g.future.set_exception(exc)
            else:
                admitted.append(g)
        if not admitted:
            return
        self.on_batch(sum(len(g.requests) for g in admitted))
        try:
            answers = self._decide([r for g in admitted for r in g.requests])
        except Exception:
            if len(admitted) == 1:
                raise
            for g in admitted:  # find the group at fault: each of the others still succeeds
                try:
                    g.future.set_result(self._decide(g.requests))
                except Exception as exc:
                    g.future.set_exception(exc)
            return
        start = 0
        for g in admitted:
            g.future.set_result(answers[start : start + len(g.requests)])
            start += len(g.requests)
