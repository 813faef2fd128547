"""
Sequence evidence and the decision rule, without a network: descriptors made by hand.

A "place" is a random unit vector; a session sees each place through its own condition (a
shared offset added to every descriptor of the session, as night shifts every descriptor) and
noise. The sequence evidence must find the place a single frame misses, tell a repeated place
from a rival, need the history to cover the sequence, and the decision must take the single-
frame rule first and let verification veto only where it saw enough to judge.
"""
import numpy as np
import pytest

from vpr_ros.core.decision import Candidate, decide, DecisionRule
from vpr_ros.core.pace import Pace
from vpr_ros.core.sequence import SequenceConfig, SequenceEvidence
from vpr_ros.core.session_tracks import SessionTracks, turn_deg
from vpr_ros.map.place_map import PlaceMap

D = 64
S = 10**9


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _places(n: int, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).normal(size=(n, D)))


def _session(places: np.ndarray, shift: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(places + shift + noise * rng.normal(size=places.shape))


def _map_with_day(places: np.ndarray, directory, step_m: float = 1.0) -> PlaceMap:
    """
    Make a 'day' session map: one keyframe per place, 1 m apart along +x.

    It is saved and loaded again: the node restarted on yesterday's map, so the frames that
    follow are a session of their own.
    """
    m = PlaceMap(D, 'test')
    day = _session(places, np.zeros(D), 0.05, 1)
    for i, d in enumerate(day):
        pose = np.array([i * step_m, 0, 0, 0, 0, 0, 1.0])
        m.add(d, i * S, pose=pose)
    m.save(str(directory))
    m.close()
    return PlaceMap.load(str(directory), 'test', D)


def test_tracks_measure_distance_and_restart_on_a_jump_back() -> None:
    t = SessionTracks()
    for i in range(5):
        t.add(i, 0, (10 + i) * S, np.array([i * 2.0, 0, 0]))
    t.add(5, 0, 3 * S, np.array([100.0, 0, 0]))  # the bag restarted: a new stretch
    ids, dist, time, _ = t.track(0)
    assert ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert dist[:5].tolist() == [0, 2, 4, 6, 8] and dist[5] > 1e8 and time[5] > 1e8
    no_pose = SessionTracks()
    no_pose.add(0, 1, 5 * S, None)
    assert np.isnan(no_pose.track(1)[1][0]) and no_pose.track(1)[2][0] == 5.0


def test_a_night_sequence_finds_the_place_a_single_frame_misses(tmp_path) -> None:
    places = _places(60)
    m = _map_with_day(places, tmp_path / 'map')
    seq = SequenceEvidence(m, SequenceConfig(length_m=10.0))
    night = _session(places, 3.0 * _places(1, 9)[0], 0.9, 2)  # strong shift, heavy noise
    hits = single_hits = total = 0
    for i in range(40):
        pose = np.array([i * 1.0 + 0.3, 0.2, 0.0])
        if i >= 12:
            raw = [int(k) for k in np.argsort(-(m_desc(m) @ night[i]))[:5]]
            scored, best = seq.evaluate(night[i], (1000 + i) * S, pose, raw, 30.0,
                                        lambda v, k: _search(m, v, k))
            total += 1
            single_hits += raw[0] == i
            hits += best is not None and abs(best.kid - i) <= 1
        seq.observe(night[i], (1000 + i) * S, pose, None)
    assert hits >= 0.8 * total and hits > single_hits + 10, (hits, single_hits, total)


def m_desc(m: PlaceMap) -> np.ndarray:
    """Every stored descriptor in id order (ids are 0.. here)."""
    return np.stack([m.descriptor(int(k)) for k in m.ids()])


def _search(m: PlaceMap, v: np.ndarray, k: int) -> list[int]:
    return [int(x.id) for x in m.search(_unit(v), k)]


def _day_map_and_query(tmp_path):
    """Build a day map of 30 places on a line and a query session over them."""
    places = _places(30)
    m = _map_with_day(places, tmp_path / 'map')
    return m, _session(places, np.zeros(D), 0.05, 3)


def _evidence(m: PlaceMap) -> SequenceEvidence:
    return SequenceEvidence(m, SequenceConfig(length_m=10.0, coverage=0.6))


def _evaluate(seq: SequenceEvidence, m: PlaceMap, q: np.ndarray, i: int, ids: list[int]):
    """Evaluate query frame `i` at metre `i` of the line, second 500 + i."""
    return seq.evaluate(q[i], (500 + i) * S, np.array([float(i), 0, 0]), ids, 30.0,
                        lambda v, k: _search(m, v, k))


def test_a_frame_that_lost_its_pose_leaves_the_history_aligned_by_distance(tmp_path) -> None:
    # The node can process a frame before its odometry arrives (no pose): that frame is left
    # out of a posed history instead of turning the next 30 s over to the time alignment.
    m, q = _day_map_and_query(tmp_path)
    seq = _evidence(m)
    for i in range(15):
        seq.observe(q[i], (500 + i) * S, None if i == 11 else np.array([float(i), 0, 0]), None)
    _, best = _evaluate(seq, m, q, 15, [15, 3])
    assert best is not None and best.kid == 15 and best.aligned_by == 'distance'
    # posed frames covering too little of the history (poses just started): aligned by time
    late = _evidence(m)
    for i in range(15):
        late.observe(q[i], (500 + i) * S, np.array([float(i), 0, 0]) if i >= 13 else None, None)
    _, best = _evaluate(late, m, q, 15, [15, 3])
    assert best is None or best.aligned_by == 'time'


def test_no_sequence_without_history_covering_it_and_a_margin_over_rivals(tmp_path) -> None:
    m, q = _day_map_and_query(tmp_path)
    seq = _evidence(m)
    # only 3 m of history: no sequence score yet, whatever the single frame says
    for i in range(3):
        seq.observe(q[i], i * S + 500 * S, np.array([float(i), 0.0, 0.0]), None)
    _, best = _evaluate(seq, m, q, 3, [3])
    assert best is None
    for i in range(3, 15):
        seq.observe(q[i], (500 + i) * S, np.array([float(i), 0.0, 0.0]), None)
    scored, best = _evaluate(seq, m, q, 15, [15, 3])
    assert best is not None and best.kid == 15 and best.margin > 0.2
    # the keyframes next to the best are the same place, not its rivals
    assert list(seq.same_place_as(15, [14, 3], True)) == [True, False]


def test_decide_takes_the_single_frame_rule_first_and_lets_verification_veto() -> None:
    rule = DecisionRule(0.9, 14, 0.1)
    strong = Candidate(1, 0, 0.95, 40, None, verified=True)
    weak_seq = Candidate(2, 0, 0.7, 3, None, verified=True, sequence=0.3, margin=0.2)
    assert [(c.match_id, c.accepted_by) for c in decide([weak_seq, strong], rule)] == \
        [(1, 'frame')]
    # the single-frame rule accepts nothing: the sequence rule decides
    got = decide([weak_seq, Candidate(1, 0, 0.95, 5, None, verified=True)], rule)
    assert [(c.match_id, c.accepted_by) for c in got] == [(2, 'sequence')]
    # a low margin, or a veto (verification saw enough and it disagrees), is no loop
    assert decide([Candidate(2, 0, 0.7, 0, None, margin=0.05)], rule) == []
    assert decide([Candidate(2, 0, 0.7, 0, None, margin=0.5, veto=True)], rule) == []
    # without a confidence threshold there is no sequence rule
    assert decide([weak_seq], DecisionRule(0.9, 14)) == []
    # a candidate outside the search's top_k is for the sequence rule only
    assert decide([Candidate(3, 0, 0.99, 50, None, verified=True, in_top_k=False)], rule) == []


@pytest.mark.parametrize('metric', [True, False])
def test_the_history_is_bounded(metric: bool) -> None:
    m = PlaceMap(D, 'test')
    seq = SequenceEvidence(m)
    d = _places(1)[0]
    for i in range(2000):  # a camera standing still at 30 Hz for a minute
        seq.observe(d, i * S // 30, np.zeros(3) if metric else None, None)
    assert len(seq._history) <= 512  # noqa: SLF001


def test_centred_similarities_from_raw_rows_equal_centring_each_row(tmp_path) -> None:
    """The one-product form of the centred cosine gives what centring each keyframe gives."""
    places = _places(40)
    m = _map_with_day(places, tmp_path / 'map')
    seq = SequenceEvidence(m)
    q = _session(places, 0.5 * _places(1, 7)[0], 0.3, 4)
    for i in range(15):  # the current session gets a mean of its own
        seq.observe(q[i], (500 + i) * S, np.array([float(i), 0.0, 0.0]), None)
    rows = seq._centred(q[15:18], m.session)
    kids = [3, 17, 30, 31]
    session = seq.tracks.locate(3)[0]
    explicit = rows @ seq._centred(np.stack([m.descriptor(k) for k in kids]), session).T
    np.testing.assert_allclose(seq._similarities(rows, kids), explicit, atol=1e-5)
    assert seq.same_place_as(15, [14, 3, 16], True).tolist() == [True, False, True]


def _l_path(n: int, corner: int, step: float = 1.0) -> np.ndarray:
    """Positions along +x up to `corner`, then along +y: one 90-degree turn."""
    return np.array([(min(i, corner) * step, max(i - corner, 0) * step) for i in range(n)])


def test_turn_is_measured_over_the_window_before_a_distance() -> None:
    xy = _l_path(41, 20, 0.5)
    dist = np.r_[0, np.cumsum(np.hypot(*np.diff(xy, axis=0).T))]
    assert turn_deg(dist, xy, 8.0, 3.0) == pytest.approx(0.0)       # straight
    assert turn_deg(dist, xy, 11.5, 3.0) == pytest.approx(90.0)     # the corner mid-window
    assert turn_deg(dist, xy, 16.0, 3.0) == pytest.approx(0.0)      # well past it
    assert turn_deg(dist[:2], xy[:2], 0.5, 3.0) == 0.0             # too short to say
    assert turn_deg(dist, np.full_like(xy, np.nan), 11.5, 3.0) == 0.0


def test_no_margin_through_a_turn_where_two_drives_disagree_on_distance(tmp_path) -> None:
    """An L-shaped route: the night drive gets margins on the straights, none at the corner."""
    places = _places(50)
    path = _l_path(50, 25)
    m = PlaceMap(D, 'test')
    for i, d in enumerate(_session(places, np.zeros(D), 0.05, 1)):
        m.add(d, i * S, pose=np.r_[path[i], 0.0, 0, 0, 0, 1.0])
    m.save(str(tmp_path / 'map'))
    m.close()
    m = PlaceMap.load(str(tmp_path / 'map'), 'test', D)
    seq = SequenceEvidence(m, SequenceConfig(length_m=10.0))
    night = _session(places, 0.5 * _places(1, 9)[0], 0.3, 2)
    margins = {}
    for i in range(50):
        pos = np.r_[path[i] + 0.2, 0.0]
        if i >= 12:
            _, best = seq.evaluate(night[i], (1000 + i) * S, pos, [i], 30.0,
                                   lambda v, k: _search(m, v, k))
            margins[i] = None if best is None else best.margin
        seq.observe(night[i], (1000 + i) * S, pos, None)
    assert all(margins[i] is not None and margins[i] > 0 for i in (15, 20, 35, 45)), margins
    assert all(margins[i] is None for i in (26, 27)), margins  # the query just turned


def test_pace_starts_at_the_maps_and_learns_another_from_frames() -> None:
    p = Pace(prior=0.02, tau_s=15.0)
    assert p.ratio == 1.0 and p.penalty() == pytest.approx([0.02, 0.0, 0.02])
    for k in range(10):  # the history stretched by 0.8 keeps fitting best
        p.update(np.array([0.30, 0.28, 0.25]), 1000.0 + k)
    assert p.ratio == 0.8 and p.penalty() == pytest.approx([0.0, 0.02, 0.04])
    p.update(np.array([0.25, 0.26, 0.31]), 1010.0)  # one frame does not turn it
    assert p.ratio == 0.8
    p.update(np.array([np.nan, 0.5, 0.1]), 1011.0)  # a ratio not aligned: no evidence
    assert p.ratio == 0.8
    p.reset()
    assert p.ratio == 1.0


def test_without_poses_the_pace_follows_a_slower_revisit(tmp_path) -> None:
    """A map by time (a keyframe a second), revisited at 0.8 of its pace: found, and learnt."""
    places = _places(80)
    m = PlaceMap(D, 'test')
    for i, d in enumerate(_session(places, np.zeros(D), 0.05, 1)):
        m.add(d, i * S)
    m.save(str(tmp_path / 'map'))
    m.close()
    m = PlaceMap.load(str(tmp_path / 'map'), 'test', D)
    seq = SequenceEvidence(m, SequenceConfig(length_s=15.0))
    q = _session(places, 2.0 * _places(1, 7)[0], 0.6, 4)  # another light, noisy
    hits = total = 0
    for i in range(90):
        place = int(round(0.8 * i))
        t = (1000 + i) * S
        if i >= 20:
            raw = [int(k) for k in np.argsort(-(m_desc(m) @ q[place]))[:5]]
            _, best = seq.evaluate(q[place], t, None, raw, 30.0, lambda v, k: _search(m, v, k))
            total += 1
            hits += best is not None and abs(best.kid - place) <= 1
        seq.observe(q[place], t, None, None)
    assert seq._pace.ratio == 0.8
    assert hits >= 0.9 * total, (hits, total)
