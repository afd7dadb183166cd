"""Per-account configuration: platform defaults with per-account overrides.

A marketplace sets Reclaim up once, for everyone (the defaults, stored under the account id
``"*"``), and overrides a few fields for the accounts that need it. Nothing is set up per
account. The effective configuration of an account is the defaults with its overrides laid
over them, field by field (``branding`` field by field too).

:func:`constraints` turns effective configurations into per-decision columns that a
:class:`~reclaim.policy.DecisionBatch` carries, so a policy chooses only among the actions an
account allows (and its propensities stay exact), and :func:`reclaim.rules.enforce` still
drops anything a policy proposed outside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from reclaim import vocab
from reclaim.fields import Text

PLATFORM = "*"  # the account id under which the platform's defaults are stored
CHANNELS = tuple(c.value for c in vocab.Channel)


class Branding(BaseModel):
    """How messages present the sender. Empty fields fall back to the platform's."""

    model_config = ConfigDict(extra="forbid")

    display_name: Text | None = Field(default=None, min_length=1, max_length=100)
    email_from: str | None = Field(
        default=None,
        pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$",
        max_length=254,
        description="From address of recovery emails.",
    )
    reply_to: str | None = Field(default=None, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")
    logo_url: HttpUrl | None = None
    accent_color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    update_payment_url: HttpUrl | None = Field(
        default=None,
        description="Where the customer updates their card; `{payment_id}` is filled in.",
    )
    authenticate_url: HttpUrl | None = Field(
        default=None,
        description=(
            "Hosted page where the customer confirms a payment with 3D Secure (the link of the "
            "reminder sent for `authentication_required`); `{payment_id}` is filled in. "
            "Without it the reminder links to `update_payment_url`."
        ),
    )


class AccountConfig(BaseModel):
    """An account's settings. As a request body every field is optional and only the fields
    given are stored as overrides; as a response it is the effective configuration."""

    model_config = ConfigDict(extra="forbid")

    opted_out: bool = Field(
        default=False, description="Reclaim neither retries nor messages this account's payments."
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=35,
        description="Retries per payment at most (the card networks' caps still apply).",
    )
    allowed_channels: list[vocab.Channel] = Field(
        default_factory=lambda: list(vocab.Channel),
        description="Channels Reclaim may message through; empty for none.",
    )
    max_messages: int = Field(default=3, ge=0, le=10, description="Messages per payment at most.")
    sender: vocab.Sender | None = Field(
        default=None,
        description="Who messages customers; null for the merchant of record.",
    )
    orchestration: bool = Field(
        default=False,
        description="Stripe Orchestration is on for this account: a retry may go to the "
        "platform's retry processor, except where Stripe forbids it (on_behalf_of payments, "
        "payments whose 3D Secure failed); each decision says which.",
    )
    branding: Branding = Field(default_factory=Branding)


def overrides(config: AccountConfig) -> dict[str, Any]:
    """The fields set on ``config`` (a parsed request body), JSON-ready."""
    return config.model_dump(mode="json", exclude_unset=True)


def effective(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> AccountConfig:
    """The platform ``defaults`` with an account's ``own`` overrides laid over them."""
    merged = {**defaults, **own}
    merged["branding"] = {**defaults.get("branding", {}), **own.get("branding", {})}
    return AccountConfig.model_validate(merged)


def constraint_row(config: AccountConfig) -> dict[str, Any]:
    """What one account allows, as one row of :func:`constraints` (a dict of plain values)."""
    return {
        "opted_out": bool(config.opted_out),
        "max_retries": np.nan if config.max_retries is None else float(config.max_retries),
        "max_messages": int(config.max_messages),
        "sender": config.sender.value if config.sender else None,
        **{f"allow_{ch}": any(a.value == ch for a in config.allowed_channels) for ch in CHANNELS},
    }


def constraints(account_ids: pd.Series, configs: Mapping[str, AccountConfig]) -> pd.DataFrame:
    """Per decision, what its account allows; accounts missing from ``configs`` get the
    defaults of :class:`AccountConfig`.

    Returns a frame on ``account_ids``' index with columns ``opted_out`` (bool),
    ``max_retries`` (float, NaN for no account cap), ``max_messages`` (int), ``sender``
    (object, None for the merchant of record) and ``allow_<channel>`` (bool) per channel:
    :func:`constraint_row` of each decision's account.
    """
    default = constraint_row(AccountConfig())
    by_account = {a: constraint_row(c) for a, c in configs.items()}
    rows = [by_account.get(a, default) for a in account_ids.astype("object").to_numpy()]
    out = pd.DataFrame(
        {
            "opted_out": np.array([r["opted_out"] for r in rows], dtype=bool),
            "max_retries": np.array([r["max_retries"] for r in rows], dtype=float),
            "max_messages": np.array([r["max_messages"] for r in rows], dtype="int64"),
            "sender": np.array([r["sender"] for r in rows], dtype=object),
        },
        index=account_ids.index,
    )
    for ch in CHANNELS:
        out[f"allow_{ch}"] = np.array([r[f"allow_{ch}"] for r in rows], dtype=bool)
    return out
