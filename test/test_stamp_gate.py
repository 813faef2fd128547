"""StampGate: implausible and duplicated image stamps are refused, real clock jumps followed."""
import pytest

from vpr_ros.core.stamp_gate import DUPLICATE, IMPLAUSIBLE, NEW_TIMELINE, OK, StampGate

S = 10**9
YEAR = 365 * 86400 * S


def _feed(gate: StampGate, stamps_s, wall0: float = 100.0, dt: float = 0.1) -> list[str]:
    """Frames at the given stamps (seconds), processed `dt` wall seconds apart; their kinds."""
    return [gate.check(int(t * S), wall0 + k * dt).kind for k, t in enumerate(stamps_s)]


def test_steady_stream_and_small_steps_back_are_accepted() -> None:
    g = StampGate(window_s=5.0)
    # 1 s stamp steps at 0.1 s wall steps (a bag played fast), a late frame 0.3 s back
    assert _feed(g, [10, 11, 12, 11.7, 13, 14]) == [OK] * 6


def test_years_ahead_far_back_and_epoch_are_refused_alone() -> None:
    g = StampGate(window_s=5.0)
    kinds = _feed(g, [1000, 1001, 1001 + YEAR / S, 1002, 1002 - 3600, 1003, 0.0, 1004])
    assert kinds == [OK, OK, IMPLAUSIBLE, OK, IMPLAUSIBLE, OK, IMPLAUSIBLE, OK]
    assert g.counters[IMPLAUSIBLE] == 3


def test_duplicates_are_refused_even_when_plausible() -> None:
    g = StampGate(window_s=5.0)
    assert _feed(g, [10, 11, 11, 12, 10]) == [OK, OK, DUPLICATE, OK, DUPLICATE]
    assert g.counters[DUPLICATE] == 2
    assert 'duplicate' in g.check(12 * S, 200.0).reason


def test_forward_jump_allowed_by_the_wall_time_that_passed() -> None:
    """A camera paused for a minute resumes a minute later: plausible; 10 min later is not."""
    g = StampGate(window_s=5.0)
    assert g.check(100 * S, 0.0).kind == OK
    assert g.check(160 * S, 60.0).kind == OK
    v = g.check(760 * S, 61.0)
    assert v.kind == IMPLAUSIBLE and '+600.000 s from the previous frame' in v.reason


def test_pose_stream_vouches_for_a_restart_and_frames_vouch_for_a_pose_gap() -> None:
    g = StampGate(window_s=5.0)
    assert g.check(1000 * S, 0.0, 1000 * S, 0.0).kind == OK
    # a bag restarted: poses jumped back with the frames
    assert g.check(10 * S, 0.5, 10 * S, 0.5).kind == OK
    # poses stopped at 10 s: frames keep going, agreeing with the previous frame
    kinds = [g.check((11 + k) * S, 0.6 + k * 0.1, 10 * S, 0.5).kind for k in range(20)]
    assert kinds == [OK] * 20
    # disagreeing with both the poses and the frames: refused
    assert g.check(5000 * S, 3.0, 31 * S, 2.9).kind == IMPLAUSIBLE


def test_a_consistent_new_timeline_is_followed_after_confirm_frames() -> None:
    g = StampGate(window_s=5.0, confirm_frames=3)
    base = 50_000
    kinds = _feed(g, [1000, 1001, base, base + 1, base + 2, base + 3, 1002])
    assert kinds == [OK, OK, IMPLAUSIBLE, IMPLAUSIBLE, NEW_TIMELINE, OK, IMPLAUSIBLE]
    # glitches that disagree with each other never confirm a timeline
    g = StampGate(window_s=5.0, confirm_frames=2)
    kinds = _feed(g, [1000, 1000 + YEAR / S, 1001, 1001 + 2 * YEAR / S, 1002, 0, 1003])
    assert kinds == [OK, IMPLAUSIBLE, OK, IMPLAUSIBLE, OK, IMPLAUSIBLE, OK]


def test_first_frame_checked_against_poses_only_and_window_zero_is_off() -> None:
    g = StampGate(window_s=5.0)
    assert g.check(YEAR, 0.0, 100 * S, 0.0).kind == IMPLAUSIBLE
    assert g.check(101 * S, 0.1, 100 * S, 0.0).kind == OK
    off = StampGate(window_s=0.0)
    assert _feed(off, [1, 1 + YEAR / S, 0, 5]) == [OK] * 4
    assert off.check(5 * S, 1.0).kind == DUPLICATE
    g.reset()
    assert g.check(YEAR, 1.0).kind == OK
    with pytest.raises(ValueError):
        StampGate(window_s=-1.0)
    with pytest.raises(ValueError):
        StampGate(confirm_frames=1)
