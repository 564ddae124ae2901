"""How every Porch command reports its errors: one line on stderr and a documented exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

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
