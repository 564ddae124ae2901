"""The script host: loads each user script as its own module and runs the step chain.

Errors in user code become ScriptError carrying the user's own traceback (their file and
line), with Porch's internal frames removed.

It opens no socket: the worker (workers/worker.py) and porch.testing (in-process runs for
pytest) both run scripts through it, so a script behaves the same in either. A script whose
`step()` or `end()` is `async def` makes the host asynchronous: `astep()` awaits the chain
(sync steps in it are called as usual), `step()` and `end()` run it on the host's own loop.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import porch
from porch.errors import ScriptError
from porch.serializers import SCRIPT_MODULE_PREFIX, send_by_value
from porch.stream import SKIP, Stop, begin_iteration

# Porch's own frames, removed from what the user sees (workers/ is porch/'s sibling; porch never
# imports it)
_PORCH_DIR = Path(porch.__file__ or "").parent
_INTERNAL_DIRS = (str(_PORCH_DIR), str(_PORCH_DIR.parent / "workers"))


def user_traceback(exc: BaseException) -> str:
    """Format `exc` with Porch's own frames removed, so the user sees their file and line."""
    tb = traceback.TracebackException.from_exception(exc)
    _strip_internal(tb)
    return "".join(tb.format())


def _strip_internal(tb: traceback.TracebackException) -> None:
    frames = [f for f in tb.stack if not f.filename.startswith(_INTERNAL_DIRS)]
    tb.stack = traceback.StackSummary.from_list(frames)
    for chained in (tb.__cause__, tb.__context__):
        if chained is not None:
            _strip_internal(chained)


def _summary(exc: BaseException) -> str:
    """One line naming the error and the innermost user frame."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(_INTERNAL_DIRS)
    ]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _exit_error(exc: SystemExit, hook: str) -> ScriptError | None:
    """What `sys.exit()` in a hook means: None for a clean exit (code 0 or None, like
    porch.Stop), else a ScriptError naming the user's file and line."""
    if exc.code is None or exc.code == 0:
        return None
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(_INTERNAL_DIRS)
    ]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return ScriptError(f"{hook} called sys.exit({exc.code!r}){where}", user_traceback(exc))


@dataclass
class Script:
    """One loaded script: its module, its hooks, and its delta_time bookkeeping."""

    path: Path
    module: types.ModuleType
    step: Callable[..., Any]
    takes_input: bool
    end: Callable[[], Any] | None
    tracks_delta: bool
    last_step_s: float | None = None
    is_async: bool = False  # step() is `async def`: awaited


def _hook(module: types.ModuleType, path: Path, name: str) -> Callable[..., Any] | None:
    fn = module.__dict__.get(name)
    if fn is None:
        return None
    if not callable(fn):
        raise ScriptError(f"{path}: {name} must be a function, got {type(fn).__name__}")
    return fn  # type: ignore[no-any-return]


def _accepts_input(step: Callable[..., Any], path: Path) -> bool:
    """Whether step() takes the input value (1 parameter) or nothing (0); else ScriptError."""
    try:
        sig = inspect.signature(step)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(None)
        return True
    except TypeError:
        pass
    try:
        sig.bind()
        return False
    except TypeError:
        line = getattr(getattr(step, "__code__", None), "co_firstlineno", "?")
        raise ScriptError(f"{path}:{line}: step() must take 0 or 1 parameters") from None


def load_script(path: Path, index: int, pipeline: str) -> Script:
    """Compile and run one script's top level in a fresh module; raise ScriptError on failure."""
    try:
        source = path.read_bytes()  # decoded as Python does: a BOM or a coding line decides
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise ScriptError(
            f"{path}:{exc.lineno}: syntax error: {exc.msg}", user_traceback(exc)
        ) from None
    except OSError as exc:
        raise ScriptError(f"{path}: cannot be read: {exc.strerror}") from None
    # a dot in a module name means a package to importlib and pickle: keep names identifiers
    module_name = re.sub(r"\W", "_", f"{SCRIPT_MODULE_PREFIX}{pipeline}_{index}_{path.stem}")
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses, pickle and typing look modules up here
    send_by_value(module)  # no other process can import it: its types travel by value
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        error = _exit_error(exc, "top-level code")
        if error is not None:
            raise error from None
        raise Stop from None  # sys.exit(0) before the first step: the stream ends at once
    except Exception as exc:
        raise ScriptError(
            f"{path}: top-level code raised {_summary(exc)}", user_traceback(exc)
        ) from None
    step = _hook(module, path, "step")
    if step is None:
        raise ScriptError(f"{path}: has no step() function; add `def step(input_data):`")
    return Script(
        path=path,
        module=module,
        step=step,
        takes_input=_accepts_input(step, path),
        end=_hook(module, path, "end"),
        tracks_delta="delta_time" in module.__dict__,
        is_async=inspect.iscoroutinefunction(step),
    )


class ScriptHost:
    """Runs a pipeline's scripts: top level once, `step()` chained per iteration, `end()` once."""

    def __init__(self, paths: Sequence[Path], pipeline: str) -> None:
        self.paths = tuple(paths)
        self.pipeline = pipeline
        self.scripts: list[Script] = []
        self.is_async = False  # some step() is `async def`
        self.clock: Callable[[], float] = time.perf_counter  # what delta_time is measured with
        self._loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> None:
        """Run each script's top level in config order; their folders go on sys.path first."""
        for folder in dict.fromkeys(str(p.parent) for p in self.paths):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        for index, path in enumerate(self.paths):
            self.scripts.append(load_script(path, index, self.pipeline))
        self.is_async = any(script.is_async for script in self.scripts)
        if self.is_async:  # the sync hot path stays free of the check
            self.step = self._step_awaited  # type: ignore[method-assign]

    def _step_awaited(self, value: Any) -> Any:
        """step() for a chain with an async step: one iteration, run to its end on the loop."""
        return self.loop.run_until_complete(self.astep(value))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop async steps and end() hooks run on (one per host, made on first use)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def close(self) -> None:
        """Close the event loop, if one was made (after end())."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _set_delta_time(self, script: Script) -> None:
        """Give `script` the seconds since its previous step() (0.0 the first time)."""
        now = self.clock()
        last = script.last_step_s
        script.module.__dict__["delta_time"] = 0.0 if last is None else now - last
        script.last_step_s = now

    def step(self, value: Any) -> Any:
        """Run one iteration: each step() gets the previous one's result; SKIP ends it early.
        (With an async step() in the chain, load() puts `_step_awaited` in its place.)"""
        try:
            for script in self.scripts:
                if script.tracks_delta:
                    self._set_delta_time(script)
                value = script.step(value) if script.takes_input else script.step()
                if value is SKIP:
                    return SKIP
            return value
        except Stop:
            raise
        except SystemExit as exc:  # sys.exit(0) ends the stream like Stop; other codes fail
            error = _exit_error(exc, "step()")
            if error is not None:
                raise error from None
            raise Stop from None
        except Exception as exc:
            raise ScriptError(f"step() raised {_summary(exc)}", user_traceback(exc)) from None

    def direct_step(self) -> tuple[Callable[..., Any], bool] | None:
        """The one script's own step() and whether it takes input, when calling it directly
        is all step() would do (one sync script without delta_time): the worker's tight
        loops call it, and turn what it raises into step()'s exception with failure()."""
        if len(self.scripts) != 1 or self.is_async or self.scripts[0].tracks_delta:
            return None
        return self.scripts[0].step, self.scripts[0].takes_input

    def failure(self, exc: BaseException) -> Exception:
        """What step() raises when a script's step() raised `exc` (Stop or a ScriptError)."""
        if isinstance(exc, Stop):
            return exc
        if isinstance(exc, SystemExit):
            return _exit_error(exc, "step()") or Stop()
        return ScriptError(f"step() raised {_summary(exc)}", user_traceback(exc))

    async def astep(self, value: Any) -> Any:
        """Run one iteration, awaiting each async step(); many may be in flight at once.
        `delta_time` is set as each script's step() is called, for whichever iteration calls
        it: a step reads it before its first `await`. Raises as `step()` does."""
        begin_iteration()
        try:
            for script in self.scripts:
                if script.tracks_delta:
                    self._set_delta_time(script)
                value = script.step(value) if script.takes_input else script.step()
                if inspect.isawaitable(value):
                    value = await value
                if value is SKIP:
                    return SKIP
            return value
        except Stop:
            raise
        except SystemExit as exc:
            error = _exit_error(exc, "step()")
            if error is not None:
                raise error from None
            raise Stop from None
        except Exception as exc:
            raise ScriptError(f"step() raised {_summary(exc)}", user_traceback(exc)) from None

    def output_origin(self) -> str:
        """Where an iteration's output comes from: the last script's step(), as file:line."""
        step = self.scripts[-1].step
        line = getattr(getattr(step, "__code__", None), "co_firstlineno", "?")
        return f"{self.scripts[-1].path}:{line}"

    def end(self) -> list[ScriptError]:
        """Run every loaded script's end() in config order; one failing does not skip the rest."""
        errors: list[ScriptError] = []
        for script in self.scripts:
            if script.end is None:
                continue
            try:
                result = script.end()
                if inspect.isawaitable(result):
                    self.loop.run_until_complete(_awaited(result))
            except SystemExit as exc:  # a clean exit ends end() early; the others still run
                error = _exit_error(exc, "end()")
                if error is not None:
                    errors.append(error)
            except Exception as exc:
                errors.append(ScriptError(f"end() raised {_summary(exc)}", user_traceback(exc)))
        return errors


async def _awaited(awaitable: Any) -> Any:
    """A coroutine awaiting `awaitable` (run_until_complete wants a coroutine or a future)."""
    return await awaitable
