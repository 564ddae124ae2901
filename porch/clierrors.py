"""How every Porch command reports its errors: one line on stderr and a documented exit code."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from functools import partial, wraps
from typing import Any, TypeVar

import click

from porch import logs
from porch.errors import PorchError

F = TypeVar("F", bound=Callable[..., Any])


def reporting(prog: str) -> Callable[[F], F]:
    """A decorator turning PorchError into `PROG: message` and its exit code (with --debug,
    the traceback instead)."""

    def decorate(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except PorchError as exc:
                if click.get_current_context().find_root().params.get("debug"):
                    raise
                click.echo(f"{prog}: {exc}", err=True)
                sys.exit(exc.exit_code)

        return wrapper  # type: ignore[return-value]

    return decorate


def set_log_level(level: str) -> None:
    """Log at `level` here and in the workers (they inherit PORCH_LOG_LEVEL)."""
    os.environ["PORCH_LOG_LEVEL"] = level
    logs.configure(level=level)


def _on_log_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value:
        return
    root = ctx.find_root()
    if param.name == "debug":
        root.params["debug"] = True  # what `reporting` looks at
        set_log_level("debug")
    elif not root.params.get("debug"):
        set_log_level("info")


def log_options(verbose: bool = True) -> Callable[[F], F]:
    """--debug (and -v/--verbose) after a subcommand too: `porch run -v` as `porch -v run`."""

    def decorate(fn: F) -> F:
        flag = partial(click.option, is_flag=True, expose_value=False, callback=_on_log_flag)
        fn = flag("--debug", help="Debug logs and tracebacks of Porch's own errors.")(fn)
        if verbose:
            fn = flag("-v", "--verbose", help="Info logs (lifecycle events).")(fn)
        return fn

    return decorate


def seconds_between(
    low: float, high: float
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback for a float option: finite seconds within [low, high]. `inf`, `nan` and 1e300
    would reach timers and socket timeouts that cannot hold them (OverflowError, or a stop that
    never ends)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise click.BadParameter(f"{value:g} is not between {low:g} and {high:g} seconds")
        return value

    return check
