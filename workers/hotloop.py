"""The worker's tight loops: a source's iterations, and a one-source stage's queue, per burst.

What `MessageLoop.iterate` (workers/loop.py) does per message (call step(), serialize, hand the
value to every link, count) costs more in the calls between those steps than in the steps
themselves. Here the common case runs as one loop per burst: the script's own step() is called
directly (`ScriptHost.direct_step`: one sync script without delta_time), small values are
serialized into a list, and the list goes to each link in one `OutputLink.extend`, with the origin
seqs and counters of the whole burst at once. A burst is at most what every link has room for (so
the window and backpressure stay exact), at most MAX_BATCH values, and ends once it has run
FLUSH_INTERVAL_S, a source's SOURCE_BURST_S (so a slow step() still sends each value at once:
batching adds nothing when idle). A source whose link is full waits for room before its next step()
(Waiter.wait_for_room), so what follows the wait leaves as one burst. A stage with more input
queued behind the burst (a backlog) keeps gathering for up to BACKLOG_FLUSH_S instead: its values
wait in the queue anyway, and a slow step()'s values sent one by one would each wake its targets
and, through their acks, its senders (a 1 ms step() with 2 replicas: 1.63x -> 1.84x the rate of 1;
A->B->C->D 105k -> 134k msgs/s). Anything else (an exception, a SKIP in a stage, a value that must
travel alone) ends the burst: what was gathered goes out first, then the regular per-message path
handles that one value, so the order of values and every on_error rule are the same as there."""

from __future__ import annotations

import functools
import io
import itertools
import operator
import pickle
import time
from collections import deque
from collections.abc import Callable
from sys import getrefcount
from typing import Any

from porch.serializers import _ATOMS, SerializationError
from porch.stream import SKIP, STOP_REQUEST, clear_stop_request, stop_requested
from porch.wire import Origin, Run, run_origins
from workers.inbox import Inbox
from workers.links import OutputLink
from workers.loop import BACKLOG_FLUSH_S, FLUSH_INTERVAL_S, MessageLoop
from workers.scheduler import PairRun, Span
from workers.sendqueue import BATCH_ITEM_MAX, MAX_BATCH, MAX_BATCH_BYTES
from workers.waiting import TICK_S

__all__ = ["FLUSH_INTERVAL_S", "HotLoop"]

# A source's burst runs up to this long: MAX_BATCH fast values fill one frame (at ~1.3 µs
# per value, FLUSH_INTERVAL_S fits ~150: a frame per 150 values cost the source ~0.2 µs per
# value in sends, acks and waits, and its target as much); a step() slower than this still
# sends each value at once
SOURCE_BURST_S = 0.0005
SAMPLE_MASK = 7  # a stage times one step() in 8 (a source: each burst's mean)
# a stage's run of small plain outputs leaves as one pickle (a WHOLE batch, a frame of its
# own) if it has this many; a shorter one goes value by value, into the link's batch with
# what comes before and after it (a burst after a short wait for room, a marker every few
# values: not a frame per handful)
WHOLE_MIN = 16


_NOT_PLAIN = object()
_ENDED = object()  # a run of a source burst's step() calls ended with no value left over
Aside = Callable[[Any, Any, Origin], None]  # a value's regular way: on_error, or after_step


class _NotBuiltin(Exception):
    """An object that pickle would reduce (see _Builtins)."""


class _Builtins(pickle.Pickler):
    """Pickles what pickle's own C code writes, exact types only: None, bool, int, float,
    bytes, str, dict, set, frozenset, list, tuple, bytearray; anything else (an instance of
    another class or of a subclass, a class, a function) would be reduced, and raises
    _NotBuiltin instead. Such a pickle names no class: it loads anywhere. One is kept and
    reused (a new one per run cost ~1.5 us more than pickle.dumps)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        super().__init__(self.out, 5)

    def reducer_override(self, obj: Any) -> Any:
        raise _NotBuiltin

    def dumps(self, values: list[Any]) -> bytes | None:
        """One pickle of `values` (protocol 5) if they hold builtins only, else None."""
        out = self.out
        out.seek(0)
        out.truncate()
        try:
            self.dump(values)
        except _NotBuiltin:
            return None
        finally:
            self.clear_memo()  # (it holds what it pickled)
        return out.getvalue()


def _captured(value: Any) -> Any:
    """A small plain value as step() returned it (porch.serializers' exact atoms, or a dict,
    list or tuple of them: a shallow copy of a mutable one is the value, its items being
    immutable), or _NOT_PLAIN. (Loops, not `_ATOMS.issuperset(map(type, ...))`: on 3.11 that
    builds a set and calls `type` the slow way, 0.72 against 0.36 us for the bench's dict.)"""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(item) not in _ATOMS or type(key) not in _ATOMS:
                return _NOT_PLAIN
        return value.copy()
    if kind is list or kind is tuple:
        for item in value:
            if type(item) not in _ATOMS:
                return _NOT_PLAIN
        return value.copy() if kind is list else value
    if kind is str or kind is bytes:  # a large one travels alone (byte bounds), as today
        return value if len(value) <= BATCH_ITEM_MAX else _NOT_PLAIN
    return value if kind in _ATOMS else _NOT_PLAIN


class HotLoop:
    """The per-burst loops of one worker's message loop (built once its scripts are loaded)."""

    def __init__(self, loop: MessageLoop) -> None:
        self.loop = loop
        self.emitter = loop.emitter
        direct = loop.host.direct_step()
        self.step: Callable[..., Any] | None = direct[0] if direct else None
        self.takes_input = bool(direct and direct[1])
        # a durable outbox stores each value on its own as it is emitted
        self.bursts = self.step is not None and self.emitter.durable is None
        serializer = self.emitter.serializer
        self.dumps_one = serializer.dumps_one or functools.partial(_one_frame, serializer.dumps)
        self.whole = serializer.name == "pickle"  # small plain values: one pickle per burst
        # a stage burst's small plain outputs, captured as step() returns them (see _captured)
        # and pickled in one call when they leave (_emit_stage): `_values` with their origins
        # as `_runs` (those of the first `_marked` of them: _mark), and the parts sealed
        # before outputs gathered one by one, each (how many of `items` came before it,
        # values, runs); `_capture`: whether this burst captures
        self._values: list[Any] = []
        self._runs: list[Run] = []
        self._marked = 0
        self._sealed: list[tuple[int, list[Any], list[Run]]] = []
        self._capture = False
        # a run of them had a dict key that is not a builtin (_emit_values): from then on a
        # dict's keys are checked as step() returns it, as its values are
        self._keyed = False
        self._builtins = _Builtins()

    def budget(self) -> int:
        """How many values every link takes now (0: the regular path must wait)."""
        outputs = self.loop.outputs
        settle = self.loop.settle
        if settle is not None and settle():
            return 0  # one input at a time (MessageLoop.take_one)
        if not outputs or not self.bursts:
            return MAX_BATCH if self.bursts else 0
        return min(MAX_BATCH, *(link.room() for link in outputs))

    # ---- a source -----------------------------------------------------------------------

    def source_burst(self, left: int | None) -> bool:
        """Run up to `left` (None: no limit) source iterations as one burst (a full link: wait
        for its room first); False when it cannot run (no direct step(), a full link that
        decides per value): call MessageLoop.iterate instead."""
        step = self.step
        if step is None or not self.bursts:
            return False
        budget = self._source_budget(left)
        if budget <= 0:
            return self._wait_for_room()
        # step() with or without its input argument, called through the same name
        call = functools.partial(step, None) if self.takes_input else step
        items: list[bytes] = []
        started = time.perf_counter()
        deadline = started + SOURCE_BURST_S
        sent = self.loop.counters.msgs_out
        ran, value, failed, alone = 0, _ENDED, None, 0
        bulk = self._bulk()
        if bulk:
            values: list[Any] = []
            ran, value, failed = self._plain_steps(call, budget, deadline, values)
            alone = self._emit_whole(values, items)  # (one by one: into `items`, as before)
        if not bulk or value is not _ENDED:  # the rest value by value
            ran, done, failed = self._value_steps(call, ran, budget, deadline, items, value)
            alone += done
        quiet = not items and failed is None and self.loop.counters.msgs_out == sent
        slow = self._end_burst(items, started, ran - alone, failed, quiet)
        self._slow_source(call, left, slow and ran == 1 and not alone and failed is None)
        return True

    def _plain_steps(self, call: Callable[[], Any], budget: int, deadline: float,
                     values: list[Any]) -> tuple[int, Any, Exception | None]:  # fmt: skip
        """A source burst's step() calls for as long as each value is small and plain
        (_captured: gathered as they are, to leave as one pickle): how many returned, the
        first value that is not plain (it ended the run, its stop and clock not checked yet;
        else _ENDED), and the failure that ended it."""
        grab = values.append
        atoms, captured, stop, clock = _ATOMS, _captured, STOP_REQUEST, time.perf_counter
        for index in range(budget):
            try:
                value = call()
            except (Exception, SystemExit) as exc:
                return index, _ENDED, self.loop.host.failure(exc)
            if type(value) is dict:  # _captured's common case, inline
                for key, item in value.items():
                    if type(item) not in atoms or type(key) not in atoms:
                        return index + 1, value, None
                # a dict only this frame holds (`value` and the call's argument: a new one
                # step() made) cannot change after it returned: no copy (~0.05 us a value)
                grab(value if getrefcount(value) <= 2 else value.copy())
            elif value is not SKIP:
                copy = captured(value)
                if copy is _NOT_PLAIN:
                    return index + 1, value, None
                grab(copy)
            if stop.requested:
                clear_stop_request()
                self.loop.ended = True
                return index + 1, _ENDED, None
            if clock() >= deadline:
                return index + 1, _ENDED, None
        return budget, _ENDED, None

    def _value_steps(
        self,
        call: Callable[[], Any],
        ran: int,
        budget: int,
        deadline: float,
        items: list[bytes],
        value: Any,
    ) -> tuple[int, int, Exception | None]:
        """The rest of a source burst value by value (each pickled on its own, into `items`),
        from `value` (the one that ended _plain_steps; _ENDED: none) on: how many step() calls
        returned in all, how many of them after_step counted (values that travel alone), and
        the failure that ended it."""
        loop = self.loop
        dumps_one, append, sends = self.dumps_one, items.append, bool(loop.outputs)
        stop, clock = STOP_REQUEST, time.perf_counter
        alone = 0
        while True:
            if value is _ENDED:
                if ran >= budget:
                    return ran, alone, None
                try:
                    value = call()
                except (Exception, SystemExit) as exc:
                    return ran, alone, loop.host.failure(exc)
                ran += 1
            if value is not SKIP and sends:
                item = dumps_one(value)
                if item is not None and len(item) <= BATCH_ITEM_MAX:
                    append(item)
                else:  # it travels alone (or fails: on_error), after what came before it
                    self._emit_own(items)
                    loop.after_step(value, None, ())
                    alone += 1
                    if loop.ended:  # (after_step saw a stop() too)
                        return ran, alone, None
            value = _ENDED
            if stop.requested:
                clear_stop_request()
                loop.ended = True
                return ran, alone, None
            if clock() >= deadline:
                return ran, alone, None

    def _source_budget(self, left: int | None) -> int:
        """How many step() calls the next source burst may make (0: a link is full)."""
        budget = self.budget()
        if budget < MAX_BATCH and self.loop.outputs:
            # the acks that came since (a busy loop reads them every TICK_S otherwise): the
            # next frame full, and no wait while they already free the window
            self.loop.read_acks()
            budget = self.budget()
        return budget if left is None or budget <= 0 else min(budget, left)

    def _bulk(self) -> bool:
        """Whether a source burst's small plain values may leave as one pickle: every output
        a plain link (no replicas, no drop_oldest), the pickle serializer."""
        outputs = self.loop.outputs
        return (
            bool(outputs)
            and self.whole
            and all(type(link) is OutputLink and not link.settings.drop_oldest for link in outputs)
        )

    def _emit_whole(self, values: list[Any], items: list[bytes]) -> int:
        """Send a source burst's small plain values as one pickle (one value, or a burst too
        large for one frame: each as the per-value path sends it, small ones into `items`,
        which _end_burst sends: a slow step()'s value goes straight to the socket,
        OutputLink.send_one); how many of them after_step counted (values that travel alone)."""
        if not values:
            return 0
        loop = self.loop
        if len(values) > 1:
            blob = pickle.dumps(values, 5)
            # the plain test looks at types, not sizes: a dict holding a large str is plain,
            # and a burst of them must not become one frame past the links' byte bounds
            if len(blob) <= MAX_BATCH_BYTES:
                origins = self.emitter.own_origins(len(values))
                for link in loop.outputs:
                    link.extend_whole(blob, values, origins)  # type: ignore[union-attr]
                loop.counters.msgs_out += len(values)  # (`values` is the outbox entries' now)
                return 0
        alone = 0
        for value in values:
            item = self.dumps_one(value)
            if item is not None and len(item) <= BATCH_ITEM_MAX:
                items.append(item)
            else:  # it travels alone, after what came before it
                self._emit_own(items)
                loop.after_step(value, None, ())
                alone += 1
        return alone

    def _slow_source(self, call: Callable[[], Any], left: int | None, slow: bool) -> None:
        """A slow step()'s values, each sent the moment step() returns it, with nothing
        between its send and the next step() but two counts and a few compares (the source's
        work after a send delays that send's way to its target about 1:1 on a loaded machine):
        the timing, tick, acks and flush wait for the end of the run (_slow_run). A run of
        SKIPs (nothing sent) is followed by the next one at once, in this loop: an idle
        source's wake-ups run its step() and little else (`left`: as for source_burst, counting
        the value before it: `slow`, it was one slow step()'s)."""
        loop = self.loop
        if not slow:
            return
        if left is not None:
            left -= 1
        while not loop.ended:
            links = self._plain_links()
            if not links:
                return
            room = min(link.room() for link in links)
            done, again = self._slow_run(call, links, room if left is None else min(room, left))
            if not again:
                return
            if left is not None:
                left -= done

    def _slow_run(self, call: Callable[[], Any], links: list[OutputLink],
                  room: int) -> tuple[int, bool]:  # fmt: skip
        """One run of _slow_source: it ends on anything else than a slow step(): a fast one, a
        value that travels alone, a failure, a stop, `room` step()s, or TICK_S (the
        housekeeping's period) once it sent a value; a run of SKIPs goes on until the
        heartbeat is due (MessageLoop.after_iteration: nothing of the housekeeping waits on a
        source that sends nothing). Returns its step() calls, and whether it was such a run
        of SKIPs (nothing sent, no failure, no fast step(), no stop): a next one may follow."""
        loop = self.loop
        emitter = self.emitter
        dumps_one = self.dumps_one
        counters = loop.counters
        stop = STOP_REQUEST
        stops = loop.stops
        clock = time.perf_counter
        started = clock()
        until = started + TICK_S
        beat_at = started + loop.waiter.house.next_heartbeat_s - time.monotonic()
        busy = 0.0
        done = 0
        sent = False
        again = False  # it ended as a run of SKIPs (see the docstring)
        failed: Exception | None = None
        while done < room:
            before = clock()
            try:
                value = call()
            except (Exception, SystemExit) as exc:
                failed = loop.host.failure(exc)
                break
            after = clock()
            if value is not SKIP:
                item = dumps_one(value)
                if item is None or len(item) > BATCH_ITEM_MAX:
                    loop.after_step(value, None, ())  # it travels alone (or fails: on_error)
                    sent = True
                    break  # (after_step counted it)
                origin = emitter.origin_seq
                emitter.origin_seq = origin + 1
                for link in links:
                    link.send_one(item, origin)
                counters.msgs_out += 1
                sent = True
            done += 1
            busy += after - before
            if stop.requested:
                clear_stop_request()
                loop.ended = True
                break
            if after - before < FLUSH_INTERVAL_S or stops.requested:
                break
            if after >= until and (sent or after >= beat_at):
                again = not sent
                break
        else:  # `room` step()s (none: a full link, or `left` reached)
            again = done > 0 and not sent
        counters.iterations += done
        if done:
            loop.step_time(busy / done)
        # (what travelled alone is flushed, the tick)
        loop.after_iteration(quiet=not (sent or failed or loop.ended or stops.requested))
        if failed is not None:
            loop.step_failed(failed, None, ())
        return done, again

    def _plain_links(self) -> list[OutputLink] | None:
        """The outputs when each is a plain link to one target (None: a group, or a stop)."""
        outputs = self.loop.outputs
        links = [link for link in outputs if type(link) is OutputLink]
        if self.loop.stops.requested or len(links) != len(outputs):
            return None
        return links

    def _end_burst(self, items: list[bytes], started: float, done: int,
                   failed: Exception | None, quiet: bool) -> bool:  # fmt: skip
        """Send a source burst's values, then its bookkeeping (`done`: the step() calls that
        after_step did not count; `failed`: what ended it; `quiet`: it sent nothing, see
        MessageLoop.after_iteration); whether the step() was slow."""
        loop = self.loop
        finished = time.perf_counter()
        slow = finished - loop.last_flush >= FLUSH_INTERVAL_S
        if slow:  # a slow step(): its value leaves now, the bookkeeping after
            self._emit_own(items, now=True)
            loop.after_iteration(quiet)
        else:
            self._emit_own(items)
        loop.step_time((finished - started) / max(done, 1))
        loop.counters.iterations += done
        if failed is not None:
            loop.step_failed(failed, None, ())
        return slow

    def _wait_for_room(self) -> bool:
        """A full link: wait for room before the next step(), not with its value made (True:
        run the next burst, or the stop that ended the wait); False when a link that drops or
        routes value by value is full: the regular path decides (a source's, or a stage's
        next input)."""
        loop = self.loop
        if loop.settle is not None:
            return False
        return loop.waiter.wait_for_room(loop.outputs)

    def _emit_own(self, items: list[bytes], now: bool = False) -> None:
        """Send a burst of a stamping pipeline's values: its next origin seqs, in order
        (`now`: a value alone goes straight to a plain target's socket, no batch)."""
        if not items:
            return
        loop = self.loop
        origins = self.emitter.own_origins(len(items))
        for link in loop.outputs:
            if now and len(items) == 1 and type(link) is OutputLink:
                link.send_one(items[0], origins[0])
            else:
                link.extend(items, origins)
        loop.counters.msgs_out += len(items)
        items.clear()

    # ---- a stage with one source --------------------------------------------------------

    def run_queue(self, inbox: Inbox) -> bool:
        """Run what the one source queued, in bursts, committing each input as take() and
        commit() would; False when a stop ends the loop."""
        loop = self.loop
        name, queue = inbox.fanin.single()
        clock = time.perf_counter
        direct = self.bursts and self.takes_input
        while queue and not loop.ended:
            if loop.stopping and not loop.draining(inbox):
                return False  # a live upstream keeps what we did not acknowledge
            budget = self.budget()
            if not direct or inbox.undecodable:
                loop.take_one(inbox)  # the regular path: one input set
            elif budget:
                self._stage_burst(inbox, name, queue, budget)
            elif loop.stopping or not self._wait_for_room():
                loop.take_one(inbox)  # (it waits while a link is full; forced past the drain)
            # else a full link was waited for before the next input's step(): what follows
            # the wait leaves together, not its first value on its own
            # with more input queued, its outputs go together for up to BACKLOG_FLUSH_S (a
            # slow step()'s values would each wake the targets and, through their acks, the
            # senders); once the queue is empty the caller sends what is gathered at once
            if clock() - loop.last_flush >= (BACKLOG_FLUSH_S if queue else FLUSH_INTERVAL_S):
                loop.after_iteration()
        return True

    def _stage_burst(self, inbox: Inbox, name: str, queue: deque[Any], budget: int) -> None:
        """Up to `budget` of the queued inputs through the script's own step(), their outputs
        gathered and handed to the links at once (with their inputs' origins)."""
        loop = self.loop
        clock = time.perf_counter
        items: list[bytes] = []
        origins: list[Origin] = []
        started = clock()
        backlog_at = started + BACKLOG_FLUSH_S
        done = 0
        left = budget
        # (a burst too short for a WHOLE run would capture for nothing: the medium-rate path,
        # frames of a few values, cost 5.2-6.0 -> 7.2-7.3 µs per value in process with it)
        self._capture = budget >= WHOLE_MIN and _queued(queue, WHOLE_MIN) and self._bulk()
        while left > 0 and queue and not loop.ended and not inbox.undecodable:
            span = queue[0]
            if type(span) is Span and not inbox.careful(span.generation):
                taken, ran, over = self._run_span(inbox, name, span, left, items, origins,
                                                  backlog_at)  # fmt: skip
                left -= taken
                done += ran
                if stop_requested():
                    clear_stop_request()
                    loop.ended = True
                if span.at == len(span.values) and queue and queue[0] is span:
                    queue.popleft()
                if over or (not queue and clock() - started >= FLUSH_INTERVAL_S):
                    break
                continue
            left -= 1
            ran = self._stage_one(inbox, name, items, origins)
            if ran < 0:
                continue  # step() failed (on_error): on with the next one
            done += ran
            if stop_requested():
                clear_stop_request()
                loop.ended = True
                break
            if clock() - started >= (BACKLOG_FLUSH_S if queue else FLUSH_INTERVAL_S):
                break
        if done:
            loop.step_time((clock() - started) / done)
        self._emit_stage(items, origins)
        loop.counters.iterations += done

    def _run_span(
        self,
        inbox: Inbox,
        name: str,
        span: Span,
        left: int,
        items: list[bytes],
        origins: list[Origin],
        backlog_at: float,
    ) -> tuple[int, int, bool]:
        """Up to `left` values of the Span at the head of the queue, straight off its list,
        committed together (commit_span) after their step()s and before anything may wait
        (an ack never precedes its step(), nor its output). Returns how many it took, how many
        count as iterations, and whether the burst is over (a stop, time is up, a wait)."""
        begin = at = i = span.at  # at: the first not committed
        end = min(len(span.values), begin + left)
        uncounted = 0  # markers, failures and values that travel alone (after_step counts)
        over = False
        while i < end and not over:
            # small plain outputs captured (to leave as one pickle), else value by value
            steps = self._plain_span if self._capture else self._value_span
            i, over, aside, output, inputs, markers = steps(name, span, i, end, items, origins,
                                                            backlog_at)  # fmt: skip
            uncounted += markers
            if aside is not None:  # (it may wait: what ran before it is committed first)
                uncounted += 1
                over = self._aside(inbox, span, at, i, items, origins, aside, output, inputs)
                at = i = i + 1
        span.at = i
        if i > at:
            inbox.commit_span(span.seq + at, span.seq + i - 1, span.generation)
        return i - begin, i - begin - uncounted, over

    def _value_span(
        self,
        name: str,
        span: Span,
        i: int,
        end: int,
        items: list[bytes],
        origins: list[Origin],
        backlog_at: float,
    ) -> tuple[int, bool, Aside | None, Any, Any, int]:
        """The Span's values i..end-1 through step(), each output gathered one by one into
        `items` (with its origin), until one goes the regular way: where it ended, whether
        the burst is over, that value's way (on_error, or after_step: it travels alone),
        output and inputs, and how many of the values were markers already."""
        loop = self.loop
        step = self.step
        assert step is not None
        dumps_one, clock, stop = self.dumps_one, time.perf_counter, STOP_REQUEST
        sends = bool(loop.outputs)
        values, stream, origin_seq = span.values, span.stream, span.origin_seq
        markers = 0
        rest = values if not i and end == len(values) else itertools.islice(values, i, end)
        for value in rest:  # the tight loop
            inputs = {name: value}
            if value is SKIP:  # filtered out upstream: pass the marker on
                output: Any = SKIP
                markers += 1
            else:
                try:
                    output = step(inputs)
                except (Exception, SystemExit) as exc:
                    return i, False, loop.step_failed, loop.host.failure(exc), inputs, markers
            if not sends:
                pass
            elif output is SKIP:  # a marker (b""), so that a join drops its origin's partner
                if stream is not None:
                    items.append(b"")
                    origins.append((stream, origin_seq + i))
            elif (item := dumps_one(output)) is not None and len(item) <= BATCH_ITEM_MAX:
                items.append(item)
                origins.append(() if stream is None else (stream, origin_seq + i))
            else:  # it travels alone (or fails: on_error decides), in its place
                return i, False, loop.after_step, output, inputs, markers
            i += 1
            if stop.requested or clock() >= backlog_at:  # porch.stop(), or time is up
                return i, True, None, None, None, markers
        return i, False, None, None, None, markers

    def _plain_span(
        self,
        name: str,
        span: Span,
        i: int,
        end: int,
        items: list[bytes],
        origins: list[Origin],
        backlog_at: float,
    ) -> tuple[int, bool, Aside | None, Any, Any, int]:
        """_value_span for as long as each output is small and plain: captured as step()
        returned it (a shallow copy: _captured), to leave as one pickle (_emit_stage); the
        value that ends the run (a marker, an output that is not captured, a failure) goes
        as _value_span takes it. Returns what _value_span returns. A dict's keys are checked
        when the run is pickled (_emit_values), not here: a key is hashable, and one of a
        builtin type is immutable all the way down, so it is still as it was returned."""
        step = self.step
        assert step is not None
        clock, stop, captured, atoms = time.perf_counter, STOP_REQUEST, _captured, _ATOMS
        keyed = self._keyed
        values = span.values
        grab = self._values.append
        output: Any = None
        rest = values if not i and end == len(values) else itertools.islice(values, i, end)
        for value in rest:  # the tight loop
            if value is SKIP:
                break  # a marker: as _value_span passes it on
            inputs = {name: value}
            try:
                output = step(inputs)
            except (Exception, SystemExit) as exc:
                self._mark(span, i)
                return i, False, self.loop.step_failed, self.loop.host.failure(exc), inputs, 0
            if type(output) is dict and not keyed:  # _captured's common case, inline: its
                copy: Any = output.copy()  # values (its keys are checked as the run is pickled)
                for item in output.values():
                    if type(item) not in atoms:
                        copy = _NOT_PLAIN
                        break
            else:
                copy = captured(output)
            if copy is _NOT_PLAIN:
                break  # (SKIP too: it is a marker)
            grab(copy)
            i += 1
            if stop.requested or clock() >= backlog_at:  # porch.stop(), or time is up
                self._mark(span, i)
                return i, True, None, None, None, 0
        self._mark(span, i)
        if i >= end:
            return i, False, None, None, None, 0
        self._seal(len(items))  # what was captured leaves before value i's output
        if values[i] is SKIP:
            return self._value_span(name, span, i, i + 1, items, origins, backlog_at)
        return self._not_captured(span, i, items, origins, backlog_at, output, inputs)

    def _not_captured(
        self,
        span: Span,
        i: int,
        items: list[bytes],
        origins: list[Origin],
        backlog_at: float,
        output: Any,
        inputs: Any,
    ) -> tuple[int, bool, Aside | None, Any, Any, int]:
        """Value i's output, not captured (SKIP: a marker; else not small and plain: the rest
        of the burst goes value by value), gathered as _value_span gathers it."""
        if output is SKIP:
            if span.stream is not None:
                items.append(b"")
                origins.append(span.origin(i))
        else:
            self._capture = False
            item = self.dumps_one(output)
            if item is None or len(item) > BATCH_ITEM_MAX:  # it travels alone (or fails)
                return i, False, self.loop.after_step, output, inputs, 0
            items.append(item)
            origins.append(span.origin(i))
        over = STOP_REQUEST.requested or time.perf_counter() >= backlog_at
        return i + 1, bool(over), None, None, None, 0

    def _aside(
        self,
        inbox: Inbox,
        span: Span,
        at: int,
        i: int,
        items: list[bytes],
        origins: list[Origin],
        handle: Callable[[Any, Any, Origin], None],
        output: Any,
        inputs: Any,
    ) -> bool:
        """The Span's value i goes the regular way, `handle(output, inputs, origin)`: on_error
        (`output`: the failure), or a value that travels alone; either may wait, so what ran
        before it (from `at` on) is sent and committed first; it is committed after. Whether
        the burst is over."""
        span.at = i + 1
        queue = inbox.fanin.single()[1]
        if span.at == len(span.values) and queue and queue[0] is span:
            queue.popleft()  # (while it waits, the queue holds what is left to take)
        self._emit_stage(items, origins)
        if i > at:
            inbox.commit_span(span.seq + at, span.seq + i - 1, span.generation)
        handle(output, inputs, span.origin(i))
        inbox.commit_one(span.seq + i, span.generation)
        return self.loop.ended or bool(inbox.undecodable)

    def _stage_one(self, inbox: Inbox, name: str, items: list[bytes], origins: list[Origin]) -> int:
        """The next queued input through step() (a burst's per-item path): 1 if it counts as
        an iteration of the burst, 0 if not, -1 if step() failed."""
        loop = self.loop
        step = self.step
        assert step is not None
        seq, value, origin, generation = inbox.fanin.next_item()
        inputs = {name: value}
        done = 0
        self._seal(len(items))  # what a Span's burst captured leaves before this one
        if value is SKIP:  # filtered out upstream: pass the marker on
            output: Any = SKIP
        else:
            try:
                output = step(inputs)
            except (Exception, SystemExit) as exc:
                self._emit_stage(items, origins)
                loop.step_failed(loop.host.failure(exc), inputs, origin)
                inbox.commit_one(seq, generation)
                return -1
            done = 1
        if not loop.outputs:
            pass
        elif output is SKIP:  # a marker (b""), so that a join drops this origin's partner
            if origin:
                items.append(b"")
                origins.append(origin)
        elif (item := self.dumps_one(output)) is not None and len(item) <= BATCH_ITEM_MAX:
            items.append(item)
            origins.append(origin)
        else:  # it travels alone (or fails: on_error decides), in its place
            self._emit_stage(items, origins)
            done = 0  # after_step counts it
            loop.after_step(output, inputs, origin)
        inbox.commit_one(seq, generation)
        return done

    def _mark(self, span: Span, i: int) -> None:
        """The captured values not in `_runs` yet are outputs of the Span's values up to i:
        their run of origins (one with the run before, if it follows it)."""
        count = len(self._values) - self._marked
        if not count:
            return
        self._marked += count
        stream = span.stream
        origin: Origin = () if stream is None else (stream, span.origin_seq + i - count)
        runs = self._runs
        if runs:
            before, last = runs[-1]
            if last == origin == () or (
                origin and len(last) == 2 and last[0] == stream and last[1] + before == origin[1]
            ):
                runs[-1] = (before + count, last)
                return
        runs.append((count, origin))

    def _seal(self, at: int) -> None:
        """What was captured leaves before the outputs gathered one by one from items[at:] on
        (its runs marked)."""
        if self._values:
            self._sealed.append((at, self._values, self._runs))
            self._values, self._runs, self._marked = [], [], 0

    def _emit_stage(self, items: list[bytes], origins: list[Origin]) -> None:
        """Send a stage's gathered outputs in order: those gathered one by one (`items`,
        `origins`: _emit's) and the captured parts between them, each as one pickle (a WHOLE
        batch), or one by one when it is short (WHOLE_MIN) or too large for one frame."""
        values = self._values
        if not values and not self._sealed:
            self._emit(items, origins)
            return
        parts = self._sealed
        if values:
            parts.append((len(items), values, self._runs))
        self._values, self._runs, self._marked, self._sealed = [], [], 0, []
        if len(parts) == 1 and parts[0][0] == len(items):  # (captured after every other)
            alone = self._emit_values(parts[0][1], parts[0][2], items, origins)
        else:
            out: list[bytes] = []
            out_origins: list[Origin] = []
            at = alone = 0
            for end, part, runs in parts:
                out += items[at:end]
                out_origins += origins[at:end]
                at = end
                alone += self._emit_values(part, runs, out, out_origins)
            out += items[at:]
            out_origins += origins[at:]
            items.clear()
            origins.clear()
            items, origins = out, out_origins
        self._emit(items, origins)
        # a value that travelled alone is counted by after_step, not by the burst
        self.loop.counters.iterations -= alone

    def _emit_values(
        self, values: list[Any], runs: list[Run], items: list[bytes], origins: list[Origin]
    ) -> int:
        """Captured outputs of a stage after `items` (gathered one by one before them): one
        WHOLE batch of builtins (_Builtins), else each into `items` as _run_span gathers it,
        or alone (after_step); how many travelled alone. (A dict key that is not a builtin,
        e.g. a script's enum, sends its run value by value, as dumps_one pickles it now: only
        a key of a mutable class of the script's, changed since it was returned, differs.)"""
        loop = self.loop
        count = len(values)
        if count >= WHOLE_MIN:
            blob = self._builtins.dumps(values)
            if blob is None:  # a dict key of another type
                self._keyed = True
            elif len(blob) <= MAX_BATCH_BYTES:  # (a dict of a large str is plain too)
                self._emit(items, origins)
                for link in loop.outputs:
                    link.extend_whole(blob, values, (), runs)  # type: ignore[union-attr]
                loop.counters.msgs_out += count
                return 0
        alone = 0
        dumps_one = self.dumps_one
        for value, origin in zip(values, run_origins(runs), strict=True):
            item = dumps_one(value)
            if item is not None and len(item) <= BATCH_ITEM_MAX:
                items.append(item)
                origins.append(origin)
            else:  # it travels alone, after what came before it
                self._emit(items, origins)
                loop.after_step(value, None, origin)
                alone += 1
        return alone

    def run_sets(self, inbox: Inbox) -> bool:
        """Several sources: run every ready input set (a join's pair, a FIFO set) with the
        script's own step(), committing each as the regular path does; False on a stop."""
        loop = self.loop
        fanin = inbox.fanin
        step = self.step if self.takes_input else None
        pass_marker = self.emitter.pass_marker
        clock = time.perf_counter
        sampled = 0
        while fanin.ready() and not loop.ended:
            if loop.stopping and not loop.draining(inbox):
                return False  # a live upstream keeps what we did not acknowledge
            if step is None or inbox.undecodable or (loop.settle is not None and loop.settle()):
                loop.take_one(inbox)
            elif (run := fanin.pairs()) is not None and (budget := self.budget()):
                self._join_burst(inbox, run, budget)
            else:
                values, taken, origin, marked = inbox.take()
                if marked:  # filtered out upstream, or a join partner that never comes
                    pass_marker(origin)
                else:
                    sampled += 1
                    started = clock() if not sampled & SAMPLE_MASK else 0.0
                    try:
                        output = step(values)
                    except (Exception, SystemExit) as exc:
                        loop.step_failed(loop.host.failure(exc), values, origin)
                    else:
                        if started:
                            loop.step_time(clock() - started)
                        loop.after_step(output, values, origin)
                inbox.commit(taken)
            if clock() - loop.last_flush >= FLUSH_INTERVAL_S:
                loop.after_iteration()
        return True

    def _join_burst(self, inbox: Inbox, run: PairRun, budget: int) -> None:
        """Up to `budget` complete pairs of a two-source join (workers/scheduler.py PairRun)
        through the script's own step(), as run_sets does one by one: a pair with a marker
        passes the marker on; the outputs are gathered and handed to the links at once; the
        pairs are committed together (each source's as one range where it can), after their
        step()s and before anything may wait (one by one while a source is careful)."""
        begin = run.start
        end = min(len(run.ones), begin + budget)
        careful = inbox.careful(run.generation(0, begin)) or inbox.careful(run.generation(1, begin))
        started = time.perf_counter()
        flush_at = started + (BACKLOG_FLUSH_S if end < len(run.ones) else FLUSH_INTERVAL_S)
        items: list[bytes] = []
        origins: list[Origin] = []
        if careful or run.marked:
            at, index, done = self._join_each(inbox, run, end, careful, flush_at, items, origins)
        else:
            at, index, done = self._join_tight(inbox, run, end, flush_at, items, origins)
        _commit_pairs(inbox, run, at, index)
        self._join_end(inbox, run, index - begin, done, run.marked, started)
        self._emit(items, origins)

    def _join_tight(
        self,
        inbox: Inbox,
        run: PairRun,
        end: int,
        flush_at: float,
        items: list[bytes],
        origins: list[Origin],
    ) -> tuple[int, int, int]:
        """A join burst's pairs of a run without markers, none careful: step() in a tight
        loop over the two lists. Returns the first pair not committed, the pair after the last
        one taken, and how many count as iterations."""
        loop = self.loop
        step = self.step
        assert step is not None
        clock, stop, dumps_one = time.perf_counter, STOP_REQUEST, self.dumps_one
        sends = bool(loop.outputs)
        (one, two), ones, twos = run.names, run.ones, run.twos
        ids, stream, origin_seq = run.origins, run.stream, run.origin_seq
        begin = at = i = run.start
        aside = 0  # pairs that went the regular way (they count there)
        over = False
        while i < end and not over:
            handle: Callable[[Any, Any, Origin], None] | None = None
            if not i and end == len(ones):
                pairs = zip(ones, twos, strict=True)
            else:
                pairs = zip(
                    itertools.islice(ones, i, end), itertools.islice(twos, i, end), strict=True
                )
            for first, second in pairs:  # the tight loop
                inputs = {one: first, two: second}
                try:
                    output = step(inputs)
                except (Exception, SystemExit) as exc:
                    output, handle = loop.host.failure(exc), loop.step_failed
                    break
                if sends:
                    if output is SKIP:  # a marker (b""), so that a join drops its partner
                        items.append(b"")
                    elif (item := dumps_one(output)) is not None and len(item) <= BATCH_ITEM_MAX:
                        items.append(item)
                    else:  # it travels alone (or fails: on_error decides), in its place
                        handle = loop.after_step
                        break
                    origins.append(ids[i] if ids is not None else (stream, origin_seq + i))
                i += 1
                if stop.requested or clock() >= flush_at:  # porch.stop(), or time is up
                    over = True
                    break
            if handle is not None:  # (it may wait: what ran before it is committed first)
                self._join_aside(inbox, run, at, i, items, origins, handle, output, inputs)
                aside += 1
                at = i  # (committed with the rest)
                i += 1
                over = stop.requested or loop.ended or clock() >= flush_at
        if stop.requested:
            clear_stop_request()
            loop.ended = True
        return at, i, i - begin - aside

    def _join_each(
        self,
        inbox: Inbox,
        run: PairRun,
        end: int,
        careful: bool,
        flush_at: float,
        items: list[bytes],
        origins: list[Origin],
    ) -> tuple[int, int, int]:
        """A join burst's pairs one by one (markers; `careful`: each committed before the
        next step()). Returns what _join_tight does."""
        loop = self.loop
        step = self.step
        assert step is not None
        clock, stop, dumps_one = time.perf_counter, STOP_REQUEST, self.dumps_one
        sends = bool(loop.outputs)
        (one, two), ones, twos = run.names, run.ones, run.twos
        at = index = run.start
        done = 0
        while index < end:
            i = index
            index += 1
            first, second = ones[i], twos[i]
            if first is not SKIP and second is not SKIP:
                inputs = {one: first, two: second}
                try:
                    output = step(inputs)
                except (Exception, SystemExit) as exc:
                    output = loop.host.failure(exc)
                    self._join_aside(inbox, run, at, i, items, origins, loop.step_failed,
                                     output, inputs)  # fmt: skip
                    at = i
                else:
                    done += 1
                    item = b"" if output is SKIP or not sends else dumps_one(output)
                    if item is None or len(item) > BATCH_ITEM_MAX:  # it travels alone (or
                        done -= 1  # fails: on_error decides), in its place; after_step counts it
                        self._join_aside(inbox, run, at, i, items, origins, loop.after_step,
                                         output, inputs)  # fmt: skip
                        at = i
                    elif sends:
                        items.append(item)
                        origins.append(run.origin(i))
            elif sends:  # a marker: no step(), pass it on
                items.append(b"")
                origins.append(run.origin(i))
            if careful:
                _commit_pairs(inbox, run, at, index)
                at = index
            if stop.requested:
                clear_stop_request()
                loop.ended = True
            if loop.ended or clock() >= flush_at:
                break
        return at, index, done

    def _join_end(
        self, inbox: Inbox, run: PairRun, taken: int, done: int, marked: bool, started: float
    ) -> None:
        """A join burst took `taken` pairs of `run`, `done` of them iterations."""
        fanin = inbox.fanin
        fanin.took_pairs(run, taken)
        if marked:  # (as take() does for a set with a marker)
            inbox.counters.unpaired = fanin.unpaired
        if done:
            self.loop.step_time((time.perf_counter() - started) / done)
        self.loop.counters.iterations += done

    def _join_aside(
        self,
        inbox: Inbox,
        run: PairRun,
        at: int,
        i: int,
        items: list[bytes],
        origins: list[Origin],
        handle: Callable[[Any, Any, Origin], None],
        output: Any,
        inputs: Any,
    ) -> None:
        """Pair i of a join burst goes the regular way, `handle(output, inputs, origin)`:
        on_error (`output`: the failure), or a value that travels alone; either may wait, so
        what ran before it (from `at` on) is sent and committed first."""
        self._emit(items, origins)
        _commit_pairs(inbox, run, at, i)
        handle(output, inputs, run.origin(i))

    def _gather(
        self, output: Any, inputs: Any, origin: Origin, items: list[bytes], origins: list[Origin]
    ) -> bool:
        """Add a stage's output (SKIP: a marker, b"") to the gathered ones; False when it went
        through the regular path instead (it travels alone, or fails: on_error decides)."""
        if output is SKIP:
            items.append(b"")
            origins.append(origin)
        elif (item := self.dumps_one(output)) is not None and len(item) <= BATCH_ITEM_MAX:
            items.append(item)
            origins.append(origin)
        else:  # in its place: what was gathered goes first
            self._emit(items, origins)
            self.loop.after_step(output, inputs, origin)
            return False
        return True

    def _emit(self, items: list[bytes], origins: list[Origin]) -> None:
        """Send gathered values (and markers: b"") of a stage, with their inputs' origins."""
        if not items:
            return
        loop = self.loop
        for link in loop.outputs:
            link.extend(items, origins)
        loop.counters.msgs_out += len(items) - items.count(b"")
        items.clear()
        origins.clear()


def _queued(queue: deque[Any], enough: int) -> bool:
    """Whether a one-source queue (Spans and items) holds at least `enough` values."""
    count = 0
    for entry in queue:
        count += len(entry) if type(entry) is Span else 1
        if count >= enough:
            return True
    return False


def _one_frame(dumps: Callable[[Any], list[Any]], value: Any) -> bytes | None:
    """dumps_one for a serializer without its own: the frame, if there is just one."""
    try:
        frames = dumps(value)
    except SerializationError:
        return None
    return frames[0] if len(frames) == 1 and type(frames[0]) is bytes else None


def _commit_pairs(inbox: Inbox, run: PairRun, first: int, end: int) -> None:
    """Commit pairs first..end-1 of `run`: each source's as one range where its seqs are
    consecutive (a Span's always are), else one by one."""
    if end <= first:
        return
    for side in run.sides:
        if not isinstance(side, list):
            seq, generation = side
            inbox.commit_span(seq + first, seq + end - 1, generation)
            continue
        part = side[first:end]
        low, high, generation = part[0][0], part[-1][0], part[0][3]
        if (
            high - low == end - first - 1
            and list(map(_SEQ, part)) == list(range(low, high + 1))
            and set(map(_GENERATION, part)) == {generation}
        ):
            inbox.commit_span(low, high, generation)
        else:
            for item in part:
                inbox.commit_one(item[0], item[3])


_SEQ = operator.itemgetter(0)
_GENERATION = operator.itemgetter(3)
