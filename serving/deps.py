"""FastAPI dependencies as ``Annotated`` aliases, so tests swap them with
``app.dependency_overrides``.

The ones that only read the app's state are ``async``: FastAPI runs a sync dependency on its
thread pool, a hop that costs more than the read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from reclaim.serving.auth import KeyCache, Principal, Role, Unauthorized, authenticate
from reclaim.serving.batcher import DecisionBatcher
from reclaim.serving.decide import Experiment
from reclaim.serving.metrics import Metrics
from reclaim.serving.policy_holder import PolicyHolder
from reclaim.serving.store.configs import ConfigCache
from reclaim.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_policy_holder(request: Request) -> PolicyHolder:
    return request.app.state.policy


async def get_batcher(request: Request) -> DecisionBatcher:
    return request.app.state.batcher


async def get_config_cache(request: Request) -> ConfigCache:
    return request.app.state.config_cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PolicyDep = Annotated[PolicyHolder, Depends(get_policy_holder)]
BatcherDep = Annotated[DecisionBatcher, Depends(get_batcher)]
ConfigCacheDep = Annotated[ConfigCache, Depends(get_config_cache)]


async def get_experiment(request: Request) -> Experiment | None:
    return request.app.state.experiment


ExperimentDep = Annotated[Experiment | None, Depends(get_experiment)]


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer rk_…`")


def require(*roles: Role):
    """A dependency admitting only keys with one of ``roles`` (admin is always admitted)."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        key = credentials.credentials if credentials else None
        cache: KeyCache = request.app.state.keys
        principal = cache.get(key) if key else None
        if principal is None:
            try:  # a database read: off the event loop
                principal = await run_in_threadpool(authenticate, request.app.state.engine, key)
            except Unauthorized as exc:
                raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
            cache.put(str(key), principal)
        if principal.role is not Role.ADMIN and principal.role not in roles:
            raise HTTPException(403, f"a {principal.role.value} key cannot do this")
        return principal

    return check


SchedulerDep = Annotated[Principal, Depends(require(Role.SCHEDULER))]
ReaderDep = Annotated[Principal, Depends(require(Role.SCHEDULER, Role.ANALYST))]
AdminDep = Annotated[Principal, Depends(require())]
