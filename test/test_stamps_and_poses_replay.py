"""
Issue 20 #5 and #7 at core level: the streams of the issue replayed through PoseBuffer + StampGate.

The node's path for a frame is: poses go into the PoseBuffer as they arrive (a pose more than
1 s behind the newest confirmed one restarts the history: a bag played again); an image's stamp
is judged by the StampGate against the previous frame and the pose stream's newest stamp (and
when the last pose arrived), then the image gets `pose_at(stamp)`. `_replay` does exactly that
on a list of timed events, with the clock the caller chose (here: arrival times).
"""
import numpy as np

from vpr_ros.core.pose_buffer import PoseBuffer
from vpr_ros.core.stamp_gate import IMPLAUSIBLE, NEW_TIMELINE, OK, StampGate

S = 10**9
YEAR = 365 * 86400 * S
T0 = 1_700_000_000 * S   # a realistic epoch-based stamp


def _truth(stamp_ns: int) -> np.ndarray:
    """Give the true position at a stamp: the robot drives along x at 1 m/s."""
    return np.array([(stamp_ns - T0) / S, 0.0, 0.0])


def _stream(seconds: float = 20.0, pose_hz: float = 50.0, image_hz: float = 10.0) -> list:
    """(arrival clock s, kind, stamp ns): poses at arrival = stamp, images 30 ms after."""
    ev = [((k / pose_hz), 'pose', T0 + int(k * S / pose_hz))
          for k in range(int(seconds * pose_hz) + 1)]
    ev += [((k / image_hz) + 0.03, 'image', T0 + int(k * S / image_hz))
           for k in range(1, int(seconds * image_hz))]
    return sorted(ev)


def _replay(events: list, gate: StampGate = None) -> tuple[list, list, PoseBuffer]:
    """Feed events; return the image verdicts, the images' poses (None: no pose), the buffer."""
    buf = PoseBuffer(max_gap_s=0.5)
    gate = gate or StampGate(window_s=10.0)
    seen = None
    kinds, poses = [], []
    for clock, kind, stamp in events:
        if kind == 'pose':
            confirmed = buf.latest_confirmed()
            if confirmed is not None and stamp < confirmed.stamp_ns - S:
                buf.clear()   # what the node's pose input does for a restarted stream
            buf.add(stamp, _truth(stamp) if stamp < T0 + YEAR // 2 else [9e9, 0, 0],
                    [0, 0, 0, 1])
            seen = clock
            continue
        newest = buf.latest()
        v = gate.check(stamp, clock, None if newest is None else newest.stamp_ns, seen)
        kinds.append(v.kind)
        poses.append(buf.pose_at(stamp) if v.accepted else None)
    return kinds, poses, buf


def _with_images(events: list, at_s: float, stamps: list) -> list:
    """Replace the stamps of the images arriving from `at_s` on by `stamps` (bad clocks)."""
    out, todo = [], list(stamps)
    for clock, kind, stamp in events:
        if kind == 'image' and clock >= at_s and todo:
            stamp = todo.pop(0)
        out.append((clock, kind, stamp))
    return out


def test_three_frames_a_year_ahead_with_poses_flowing_are_all_refused() -> None:
    """Defect 5: the third such frame used to be followed as a new timeline (a keyframe)."""
    ahead = [T0 + YEAR + k * S // 10 for k in range(3)]
    kinds, poses, _ = _replay(_with_images(_stream(), 5.0, ahead))
    bad = kinds[49:52]
    assert bad == [IMPLAUSIBLE] * 3, bad
    assert NEW_TIMELINE not in kinds and kinds.count(IMPLAUSIBLE) == 3
    assert kinds[52:] == [OK] * len(kinds[52:])   # the correct frames go on being accepted


def test_three_epoch_stamped_frames_are_all_refused() -> None:
    epoch = [k * S // 10 for k in range(3)]
    kinds, _, _ = _replay(_with_images(_stream(), 5.0, epoch))
    assert kinds[49:52] == [IMPLAUSIBLE] * 3 and NEW_TIMELINE not in kinds


def test_a_future_pose_cannot_vouch_for_an_image_with_its_stamp() -> None:
    """Defect 5: a pose a year ahead, then an image with that stamp: it used to be stored."""
    ev = _stream()
    ev.append((5.001, 'pose', T0 + YEAR))
    ev.append((5.002, 'image', T0 + YEAR))
    kinds, poses, buf = _replay(sorted(ev))
    i = sorted(e for e in ev if e[1] == 'image').index((5.002, 'image', T0 + YEAR))
    assert kinds[i] == IMPLAUSIBLE
    assert buf.counters['outlier_dropped'] == 1 and buf.counters['out_of_order'] == 0


def test_without_a_live_pose_stream_a_new_timeline_is_still_followed() -> None:
    """A bag restarted without poses (or poses silent for longer than pose_live_s)."""
    gate = StampGate(window_s=5.0, pose_live_s=2.0)
    assert gate.check(1000 * S, 0.0, 1000 * S, 0.0).kind == OK
    kinds = [gate.check((50_000 + k) * S, 10.0 + k, 1000 * S, 0.0).kind for k in range(4)]
    assert kinds == [IMPLAUSIBLE, IMPLAUSIBLE, NEW_TIMELINE, OK]
    live = StampGate(window_s=5.0, pose_live_s=2.0)
    assert live.check(1000 * S, 0.0, 1000 * S, 0.0).kind == OK
    kinds = [live.check((50_000 + k) * S, 10.0 + k, (1010 + k) * S, 10.0 + k).kind
             for k in range(4)]
    assert kinds == [IMPLAUSIBLE] * 4
    assert 'pose stream is live' in live.check(50_010 * S, 20.0, 1020 * S, 20.0).reason


def test_a_future_pose_just_before_the_right_one_costs_no_image_its_pose() -> None:
    """Defect 7: correct poses after it were refused as out of order; images lost their pose."""
    clean_kinds, clean_poses, _ = _replay(_stream())
    assert clean_kinds == [OK] * len(clean_kinds) and all(p is not None for p in clean_poses)
    ev = _stream()
    for at, ahead in ((3.0, S * 3 // 10), (7.0, 3 * S), (11.0, YEAR), (15.0, S * 3 // 2)):
        # arrives just before the correct pose stamped `at`
        ev.append((at - 1e-4, 'pose', T0 + int(at * S) + ahead))
    kinds, poses, buf = _replay(sorted(ev))
    assert kinds == clean_kinds
    assert [p is None for p in poses] == [p is None for p in clean_poses]
    for p in poses:   # and every pose is the true one, not one dragged toward the outlier
        np.testing.assert_allclose(p.position, _truth(p.stamp_ns), atol=1e-6)
    assert buf.counters['outlier_dropped'] == 4 and buf.counters['out_of_order'] == 0


def test_a_real_jump_of_the_pose_stream_is_confirmed_by_the_next_pose() -> None:
    for jump_s, held in ((60, False), (7200, True)):
        buf = PoseBuffer(max_gap_s=0.5)
        for k in range(10):
            assert buf.add(T0 + k * S // 50, _truth(T0 + k * S // 50), [0, 0, 0, 1])
        t = T0 + jump_s * S
        assert buf.add(t, _truth(t), [0, 0, 0, 1])
        # Within trust_jump_s (a bag or simulation skipping): stored and used at once, but
        # not yet confirmed; beyond it (a clock gone wrong by hours): not stored until then.
        assert buf.latest().stamp_ns == (T0 + 9 * S // 50 if held else t)
        assert buf.latest_confirmed().stamp_ns == T0 + 9 * S // 50
        assert buf.add(t + S // 50, _truth(t), [0, 0, 0, 1])
        assert buf.latest_confirmed().stamp_ns == t + S // 50 and len(buf) == 12
        assert buf.counters['jump_confirmed'] == 1 and buf.counters['outlier_dropped'] == 0
        assert buf.counters['held_ahead'] == int(held) and buf.pose_at(t) is not None


def test_a_sparse_stream_that_skips_ahead_with_one_pose_still_vouches_for_its_image() -> None:
    """One pose per frame (1 Hz), a replay that skips 40 s: the frame is not refused."""
    ev = [(0.1 * k, 'pose', T0 + k * S) for k in range(10)]
    ev += [(0.1 * k + 0.05, 'image', T0 + k * S) for k in range(10)]
    ev += [(1.1, 'pose', T0 + 50 * S), (1.15, 'image', T0 + 50 * S)]
    kinds, poses, _ = _replay(sorted(ev))
    assert kinds == [OK] * 11 and poses[-1] is not None


def test_the_gate_judges_time_by_the_callers_clock() -> None:
    """A bag of sparse frames (60 s apart) replayed 100x faster, under use_sim_time."""
    sim = [0.0]
    gate = StampGate(window_s=10.0, clock=lambda: sim[0])
    kinds = []
    for k in range(10):
        sim[0] = 1000.0 + 60.0 * k   # /clock follows the bag's time
        kinds.append(gate.check(T0 + k * 60 * S).kind)
    assert kinds == [OK] * 10
    # The same frames judged by the wall clock (what the node used to do) are refused.
    wall = StampGate(window_s=10.0)
    assert [wall.check(T0 + k * 60 * S).kind for k in range(3)] == [OK, IMPLAUSIBLE,
                                                                    IMPLAUSIBLE]
