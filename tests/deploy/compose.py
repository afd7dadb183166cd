"""compose.yaml read the way Docker Compose reads it, so that a test can run its services as
local processes: YAML merge keys, ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``
from the ``.env`` file, ``$$`` for a literal ``$``, the image's ENTRYPOINT from the Dockerfile.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


class MissingVariable(KeyError):
    """A ``${VAR:?message}`` whose variable is unset or empty."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` with compose's variables replaced from ``env``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, how, rest = match.groups()
        value = env.get(name, "")
        if how == ":-" and not value:
            return rest
        if how == ":?" and not value:
            raise MissingVariable(f"{name}: {rest}")
        return value

    return _VARIABLE.sub(one, text)


def load() -> dict[str, Any]:
    """compose.yaml as Compose sees it before interpolation (merge keys applied)."""
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> tuple[dict[str, str], set[str]]:
    """``.env.example``'s variables that are set (uncommented) with their example values,
    and every variable it names (set or commented out)."""
    given, named = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        found = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if not found:
            continue
        named.add(found.group(2))
        if not found.group(1):
            given[found.group(2)] = found.group(3)
    return given, named


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT, from the Dockerfile."""
    (line,) = [x for x in DOCKERFILE.read_text().splitlines() if x.startswith("ENTRYPOINT ")]
    return json.loads(line.removeprefix("ENTRYPOINT "))


@dataclass
class Service:
    """One service as a process would run it: its argv and the environment it sets."""

    name: str
    argv: list[str]
    environment: dict[str, str]
    env_file: bool
    image: str | None


def service(spec: dict[str, Any], name: str, env: dict[str, str]) -> Service:
    """Service ``name`` of ``spec`` (:func:`load`) with variables from ``env``."""
    s = spec["services"][name]
    command = s.get("command") or []
    command = command.split() if isinstance(command, str) else list(command)
    first = s.get("entrypoint") or (entrypoint() if s.get("build") else [])
    argv = [interpolate(str(x), env) for x in [*first, *command]]
    raw = s.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    environment = {k: interpolate(str(v), env) for k, v in raw.items()}
    return Service(name, argv, environment, "env_file" in s, s.get("image"))
