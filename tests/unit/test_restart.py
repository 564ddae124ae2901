"""Restart policy and backoff: which exits restart a worker, after how long, and when to give up."""

from __future__ import annotations

import pytest

from porch.restart import Action, BackoffSettings, Decision, RestartPolicy, RestartTracker

pytestmark = pytest.mark.timeout(30)


def crash_times(tracker: RestartTracker, times: list[float]) -> list[Decision]:
    return [tracker.on_exit(now_s=t, failed=True) for t in times]


def test_policy_values_match_the_config_field() -> None:
    assert RestartPolicy("always") is RestartPolicy.ALWAYS
    assert RestartPolicy("on-failure") is RestartPolicy.ON_FAILURE
    assert RestartPolicy("never") is RestartPolicy.NEVER
    with pytest.raises(ValueError):
        RestartPolicy("sometimes")


def test_default_settings_are_the_contract() -> None:
    settings = BackoffSettings()
    assert (settings.base_s, settings.max_s, settings.max_failures, settings.window_s) == (
        0.5,
        30.0,
        5,
        60.0,
    )


def test_backoff_doubles_then_gives_up_on_the_sixth_failure_in_the_window() -> None:
    tracker = RestartTracker(RestartPolicy.ON_FAILURE)
    decisions = crash_times(tracker, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert [d.action for d in decisions[:5]] == [Action.RESTART] * 5
    assert [d.delay_s for d in decisions[:5]] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert decisions[5].action is Action.GIVE_UP
    assert tracker.restarts == 5


def test_delay_is_capped_at_max_s() -> None:
    settings = BackoffSettings(base_s=1.0, max_s=5.0, max_failures=10)
    tracker = RestartTracker(RestartPolicy.ALWAYS, settings)
    delays = [d.delay_s for d in crash_times(tracker, [float(t) for t in range(6)])]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_huge_failure_counts_do_not_overflow() -> None:
    settings = BackoffSettings(max_failures=10_000, window_s=1e9)
    assert settings.delay_s(5000) == settings.max_s
    tracker = RestartTracker(RestartPolicy.ON_FAILURE, settings)
    assert crash_times(tracker, [float(t) for t in range(2000)])[-1].delay_s == 30.0


def test_failures_older_than_the_window_are_forgotten() -> None:
    tracker = RestartTracker(RestartPolicy.ON_FAILURE)
    crash_times(tracker, [0.0, 1.0, 2.0, 3.0, 4.0])
    # 70 s later all five are out of the 60 s window: back to the first delay.
    decision = tracker.on_exit(now_s=70.0, failed=True)
    assert decision == Decision(Action.RESTART, 0.5)
    assert tracker.failures == 1


def test_window_slides_one_failure_at_a_time() -> None:
    tracker = RestartTracker(RestartPolicy.ON_FAILURE)
    crash_times(tracker, [0.0, 10.0, 20.0, 30.0, 40.0])
    # At 65 s the failure at 0 s has left the window; four remain plus this one: not over 5.
    assert tracker.on_exit(now_s=65.0, failed=True) == Decision(Action.RESTART, 8.0)
    # At 66 s the one at 10 s is still within 60 s: six in the window.
    assert tracker.on_exit(now_s=66.0, failed=True).action is Action.GIVE_UP


def test_a_failure_exactly_window_s_ago_still_counts() -> None:
    settings = BackoffSettings(max_failures=1, window_s=10.0)
    tracker = RestartTracker(RestartPolicy.ON_FAILURE, settings)
    assert tracker.on_exit(now_s=0.0, failed=True).action is Action.RESTART
    assert tracker.on_exit(now_s=10.0, failed=True).action is Action.GIVE_UP


def test_slow_crash_loop_is_restarted_forever() -> None:
    tracker = RestartTracker(RestartPolicy.ON_FAILURE)
    decisions = crash_times(tracker, [t * 20.0 for t in range(50)])
    # At most four failures in any 60 s window (t-60 still counts): never gives up.
    assert all(d.action is Action.RESTART for d in decisions)
    assert max(d.delay_s for d in decisions) == 4.0


def test_on_failure_leaves_a_clean_exit_alone() -> None:
    tracker = RestartTracker(RestartPolicy.ON_FAILURE)
    assert tracker.on_exit(now_s=0.0, failed=False) == Decision(Action.NONE, 0.0)
    assert tracker.restarts == 0


def test_always_restarts_a_clean_exit_without_counting_it_as_a_failure() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS)
    decisions = [tracker.on_exit(now_s=float(t), failed=False) for t in range(20)]
    assert decisions == [Decision(Action.RESTART, 0.5)] * 20
    assert tracker.failures == 0
    assert tracker.restarts == 20


def test_always_still_backs_off_and_gives_up_on_failures() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS)
    tracker.on_exit(now_s=0.0, failed=False)
    decisions = crash_times(tracker, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert [d.delay_s for d in decisions[:5]] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert decisions[5].action is Action.GIVE_UP


def test_clean_exit_between_failures_does_not_reset_the_backoff() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS)
    crash_times(tracker, [0.0, 1.0])
    assert tracker.on_exit(now_s=2.0, failed=False) == Decision(Action.RESTART, 0.5)
    assert tracker.on_exit(now_s=3.0, failed=True) == Decision(Action.RESTART, 2.0)


@pytest.mark.parametrize("failed", [True, False])
def test_never_does_nothing(failed: bool) -> None:
    tracker = RestartTracker(RestartPolicy.NEVER)
    decisions = [tracker.on_exit(now_s=float(t), failed=failed) for t in range(10)]
    assert {d.action for d in decisions} == {Action.NONE}
    assert tracker.restarts == 0
    assert tracker.failures == 0


def test_reset_forgets_failures_but_keeps_the_restart_total() -> None:
    tracker = RestartTracker(RestartPolicy.ON_FAILURE)
    decisions = crash_times(tracker, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert decisions[-1].action is Action.GIVE_UP
    tracker.reset()
    assert tracker.failures == 0
    assert tracker.on_exit(now_s=6.0, failed=True) == Decision(Action.RESTART, 0.5)
    assert tracker.restarts == 6


def test_give_up_repeats_while_the_window_is_full() -> None:
    tracker = RestartTracker(RestartPolicy.ON_FAILURE)
    crash_times(tracker, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert tracker.on_exit(now_s=6.0, failed=True).action is Action.GIVE_UP
    assert tracker.restarts == 5


def test_zero_max_failures_gives_up_at_once() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS, BackoffSettings(max_failures=0))
    assert tracker.on_exit(now_s=0.0, failed=True).action is Action.GIVE_UP


@pytest.mark.parametrize(
    "kwargs",
    [{"base_s": -1.0}, {"base_s": 2.0, "max_s": 1.0}, {"max_failures": -1}, {"window_s": 0.0}],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        BackoffSettings(**kwargs)  # type: ignore[arg-type]
