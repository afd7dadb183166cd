"""What is checked again just before an action runs: the payment still open and its account
not blocked, no card update since the decision, the network's rules and the account's own
limits (the API's and the simulator's: ``rules.limits_row``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from reclaim import rules
from reclaim.account_config import constraint_row
from reclaim.policy import summarize_row
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t


class Checks:
    """The :class:`~reclaim.serving.scheduler.core.Scheduler`'s re-checks."""

    def recheck(
        self,
        actions: list[dict[str, Any]],
        history: Mapping[
            repo.Ref, tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]
        ],
        now: datetime,
    ) -> list[tuple[str, Any] | None]:
        """Per action, why it must not run now: ``("cancelled", reason)``, ``("replan",
        reason)`` or ``("wait", until)``; None when it may. ``history`` holds the payments'
        stored rows (``repo.load_rows``); each payment has at most one open action. The rules
        are the API's and the simulator's (``rules.limits_row``, equal to ``rules.limits``)."""
        account_ids = list({x["account_id"] for x in actions})
        customers = {key: rows[0]["customer_id"] for key, rows in history.items()}
        with self.engine.connect() as conn:
            blocked = set(
                conn.execute(
                    sa.select(t.account_status.c.account_id).where(
                        t.account_status.c.account_id.in_(account_ids)
                    )
                ).scalars()
            )
            c = t.card_updates.c
            card_updated: dict[str, datetime] = dict(
                conn.execute(
                    sa.select(c.customer_id, sa.func.max(c.updated_at))
                    .where(c.customer_id.in_(list(set(customers.values()))))
                    .group_by(c.customer_id)
                ).all()
            )
        config = self.configs.effective(self.engine, account_ids)
        verdicts: list[tuple[str, Any] | None] = [None] * len(actions)
        later = now + timedelta(seconds=1)
        for i, action in enumerate(actions):
            pid = repo.ref(action)
            if pid not in history:
                verdicts[i] = ("cancelled", "unknown_payment")
                continue
            if action["account_id"] in blocked:
                verdicts[i] = ("cancelled", "account_blocked")
                continue
            updated = card_updated.get(customers[pid])
            if (
                updated is not None
                and repo.aware(action["decided_at"]) < repo.aware(updated) <= now
            ):
                verdicts[i] = ("replan", "card_updated")
                continue
            payment, attempts, messages = history[pid]
            if payment.get("closed_at") is not None:
                verdicts[i] = ("cancelled", "payment_closed")
                continue
            state = summarize_row(payment, attempts, messages, now)
            own = constraint_row(config[payment["account_id"]])
            lim = rules.limits_row(payment, state, now, self.rules, own)
            last = max(a["attempt_number"] for a in attempts)
            if lim["blocked"]:
                verdicts[i] = ("cancelled", lim["blocked"])
            elif last != action["after_attempt"]:
                verdicts[i] = ("cancelled", "superseded")  # a newer attempt: plan from it
            elif lim["earliest_retry_at"] > later:
                verdicts[i] = ("wait", lim["earliest_retry_at"])
        return verdicts
