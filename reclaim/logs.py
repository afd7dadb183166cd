"""Logs for people and for machines: plain lines, or JSON lines (``RECLAIM_LOG_FORMAT=json``)
that carry the request id, the connected account and the payment a line is about.

What a JSON line holds is fixed: time, level, logger, message, the context :func:`bound` set
(``request_id``, ``account_id``, ``payment_id``, ``action_id``, ``event_id``) and an
exception's type and traceback. Nothing else of a record is written: no request body, no
customer's address, no card data, whatever a caller passes in ``extra``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

#: The context a log line may carry, in the order a JSON line writes them.
CONTEXT_FIELDS = ("request_id", "account_id", "payment_id", "action_id", "event_id")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"reclaim_log_{name}", default=None) for name in CONTEXT_FIELDS
}
#: Loggers that write a line per request, step or worker: quiet unless debugging.
CHATTY = ("httpx", "stripe", "alembic", "distributed")


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Within the block, every log line of this thread or task carries ``fields`` (names from
    :data:`CONTEXT_FIELDS`; None leaves a field as it was)."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {sorted(unknown)}")
    tokens = [(name, _context[name].set(str(v))) for name, v in fields.items() if v is not None]
    try:
        yield
    finally:
        for name, token in reversed(tokens):
            _context[name].reset(token)


def context() -> dict[str, str]:
    """The fields :func:`bound` set here, without the unset ones."""
    return {name: v for name in CONTEXT_FIELDS if (v := _context[name].get()) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the bound context, and ``error``/``traceback`` for an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line)  # ASCII: a lone surrogate in a message cannot break the line


class _ContextFilter(logging.Filter):
    """Plain lines end with the bound context (``[account_id=… payment_id=…]``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound_now = context()
        record.context = (
            " [" + " ".join(f"{k}={v}" for k, v in bound_now.items()) + "]" if bound_now else ""
        )
        return True


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is written (a test runner or a CLI
    runner swaps it; a handler bound to the old one would write to a closed file)."""

    _reclaim = True  # installed by configure(), replaced by the next configure()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(level: str | int = "INFO", fmt: str = "text") -> None:
    """Send the process's logs to stderr as ``fmt`` (``text`` or ``json``) from ``level``:
    one handler on the root logger, replacing the one an earlier call installed (others, a
    test runner's, stay); uvicorn's loggers write through it too."""
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    handler = _Stderr()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s%(context)s"))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_reclaim", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for chatty in CHATTY:
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
