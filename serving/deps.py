"""FastAPI dependencies as ``Annotated`` aliases, so tests swap them with
``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from reclaim.serving.metrics import Metrics
from reclaim.serving.policy_holder import PolicyHolder
from reclaim.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_policy_holder(request: Request) -> PolicyHolder:
    return request.app.state.policy


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PolicyDep = Annotated[PolicyHolder, Depends(get_policy_holder)]
