"""Logging setup: structlog, JSON lines when not on a TTY, readable key=value on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure(fmt: str | None = None, level: str | None = None, **context: Any) -> None:
    """Configure structlog for this process; PORCH_LOG_FORMAT / PORCH_LOG_LEVEL override."""
    fmt = os.environ.get("PORCH_LOG_FORMAT") or fmt
    if fmt not in ("json", "console"):
        fmt = "console" if sys.stderr.isatty() else "json"
    level = os.environ.get("PORCH_LOG_LEVEL") or level or "info"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S" if fmt == "console" else "iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(**context)


def get(name: str | None = None) -> Any:
    """A bound logger."""
    return structlog.get_logger(name)
