"""Logging setup: structlog, JSON lines when not on a TTY, readable key=value on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _settings(fmt: str | None, level: str | None) -> tuple[str, str, bool]:
    """The format, level and colours configure() uses (the environment overrides)."""
    tty = sys.stderr.isatty()
    fmt = os.environ.get("PORCH_LOG_FORMAT") or fmt
    if fmt not in ("json", "console"):
        fmt = "console" if tty else "json"
    return fmt, os.environ.get("PORCH_LOG_LEVEL") or level or "info", tty


def configure(fmt: str | None = None, level: str | None = None, **context: Any) -> None:
    """Configure structlog for this process; PORCH_LOG_FORMAT / PORCH_LOG_LEVEL override."""
    fmt, level, tty = _settings(fmt, level)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
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


_configured: tuple[str, str, bool] | None = None  # what configure_once() set up


def configure_once() -> None:
    """configure() with the environment's settings, unless this process did already with the
    same ones, or the fork server's template did before forking it: a worker then logs with
    the template's configuration, in pages it shares (configuring again copied ~0.2 MB)."""
    global _configured
    settings = _settings(None, None)
    if settings != _configured or not structlog.is_configured():
        configure()
        _configured = settings


def get(name: str | None = None) -> Any:
    """A bound logger."""
    return structlog.get_logger(name)
