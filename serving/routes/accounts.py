"""``GET`` and ``PUT /v1/accounts/{account_id}/config``: platform defaults (account ``*``) and
per-account overrides, with the effective configuration.

Any key may read the configuration of an account it sees; only admin keys change it, a scoped
admin key only for its own accounts, and the platform defaults only with an unscoped one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import AwareDatetime, BaseModel, Field

from reclaim.account_config import PLATFORM, AccountConfig, effective, overrides
from reclaim.serving.auth import Principal
from reclaim.serving.deps import AdminDep, ConfigCacheDep, EngineDep, ReaderDep
from reclaim.serving.store import configs
from reclaim.serving.store import repository as repo

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

AccountId = Annotated[
    str,
    Path(
        pattern=r"^(\*|[A-Za-z0-9_\-]{1,255})$",
        description="A connected account id (`acct_…`), or `*` for the platform defaults.",
    ),
]


class ConfigView(BaseModel):
    account_id: str
    overrides: dict[str, Any] = Field(description="The fields this account sets itself.")
    platform_defaults: dict[str, Any] = Field(description="The fields the platform sets.")
    effective: AccountConfig = Field(description="What Reclaim applies to this account.")
    updated_at: AwareDatetime | None = Field(description="When the overrides last changed.")


def _visible(principal: Principal, account_id: str) -> None:
    if account_id != PLATFORM and not principal.sees(account_id):
        raise HTTPException(404, f"no account {account_id!r} for this key")


def _view(engine, account_id: str) -> ConfigView:
    stored = configs.stored_overrides(engine, [account_id])
    defaults = stored.get(PLATFORM, {})
    own = stored.get(account_id, {})
    return ConfigView(
        account_id=account_id,
        overrides=own,
        platform_defaults=defaults,
        effective=effective(defaults, own),
        updated_at=repo.aware(configs.updated_at(engine, account_id)),
    )


RESPONSES = {
    401: {"description": "Missing or invalid API key"},
    404: {"description": "An account this key does not see"},
}


@router.get(
    "/{account_id}/config",
    summary="An account's configuration: its overrides, the defaults, and the effect",
    responses=RESPONSES,
)
def get_config(account_id: AccountId, engine: EngineDep, principal: ReaderDep) -> ConfigView:
    _visible(principal, account_id)
    return _view(engine, account_id)


@router.put(
    "/{account_id}/config",
    summary="Replace an account's overrides (or, for `*`, the platform defaults)",
    description=(
        "The body lists the fields this account overrides; fields left out follow the "
        "platform defaults. An empty body `{}` removes every override."
    ),
    responses={**RESPONSES, 403: {"description": "Not an admin key, or a scoped one for `*`"}},
)
def put_config(
    account_id: AccountId,
    body: AccountConfig,
    engine: EngineDep,
    principal: AdminDep,
    cache: ConfigCacheDep,
) -> ConfigView:
    _visible(principal, account_id)
    if account_id == PLATFORM and principal.accounts is not None:
        raise HTTPException(403, "only an unscoped admin key can change the platform defaults")
    configs.replace_overrides(engine, account_id, overrides(body))
    cache.clear()  # this process's next decision reads the change
    return _view(engine, account_id)
