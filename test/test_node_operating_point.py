"""
The shipped operating point over DDS: the real corridor played as a loop into a default node.

The corridor's reference traverse, then its query traverse (1 frame per second, no pose topic:
keyframes by time and novelty), go to `vpr_node` with its default configuration, i.e. the
built-in model's calibrated operating point. Every published best candidate of a query frame
must be one of the references `ground_truth.csv` lists for it (a best candidate of a reference
frame is false: the reference traverse never revisits itself). The recall is printed.
"""
import csv
import glob
import os
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import Client, NodeProcess, rows, stream  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
S = 1_000_000_000
T0 = 1_700_000_000 * S


def _corridor_loop(corridor_dir: str):
    refs = sorted(glob.glob(os.path.join(corridor_dir, 'ref', '*.jpg')))
    queries = sorted(glob.glob(os.path.join(corridor_dir, 'query', '*.jpg')))
    files = refs + queries
    frames = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
    where = {os.path.relpath(f, corridor_dir): k for k, f in enumerate(files)}
    truth: dict[int, set] = {}
    with open(os.path.join(corridor_dir, 'ground_truth.csv'), newline='') as f:
        for row in list(csv.reader(f))[1:]:
            truth[where[row[0]]] = {where[r] for r in row[1].split(';') if r}
    stamps = np.array([T0 + k * S for k in range(len(files))], dtype=np.int64)
    return SimpleNamespace(frames=frames, stamps_ns=stamps, poses=None, truth=truth,
                           n_ref=len(refs))


def test_default_node_publishes_no_false_best_candidate_on_the_corridor(corridor_dir,
                                                                         tmp_path) -> None:
    from sensor_msgs.msg import Image

    seq = _corridor_loop(corridor_dir)
    node = NodeProcess(str(tmp_path), 'vpr_corridor', {'pose_type': 'none', 'qos': 'reliable',
                                                         'map_dir': ''})
    client = None
    try:
        node.wait_ready()
        assert 'operating point: calibrated' in node.log(), node.log()
        client = Client('client_corridor', node)
        topic = node.topic('camera/image_raw')
        client.wait_connected([(Image, topic)])
        status = stream(client, seq, range(len(seq.frames)), topic, 'none')
        n_matches = sum(1 for s in status if s[3] > 0)
        client.wait_for(lambda: len(client.matches) >= n_matches, 30, 'all matches')
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()
    index = {round(int(t) / 1e9, 6): k for k, t in enumerate(seq.stamps_ns)}
    false, true = [], []
    for m in client.matches:
        best = rows(m)[0]
        q, j = index[round(best[0], 6)], index[round(best[1], 6)]
        (true if j in seq.truth.get(q, set()) else false).append((q, j, round(best[2], 4)))
    n_queries = len(seq.frames) - seq.n_ref
    print(f'corridor as a loop, default node: {len(client.matches)} queries published, '
          f'{len(true)} correct, {len(false)} false best candidates {false}; recall '
          f'{len(true) / n_queries:.3f} of {n_queries} query frames')
    assert false == []
    assert true, 'nothing published: the test would not see a false candidate either'


def test_a_threshold_given_at_its_default_value_is_used(tmp_path) -> None:
    """
    Issue 18: `score_threshold: 0.8` (the default value) given on purpose must be run.

    The node used to count a value as set only when it differed from the default, and ran the
    model's calibrated 0.9231 instead. Unset, the calibrated point applies.
    """
    from vpr_ros.model.operating_point import builtin_operating_point

    point = builtin_operating_point()
    for name, params, want in (
            ('vpr_given', {'score_threshold': 0.8}, 0.8),
            ('vpr_unset', {}, point.score_threshold)):
        node = NodeProcess(str(tmp_path), name, {'pose_type': 'none', 'map_dir': '', **params})
        client = None
        try:
            node.wait_ready()
            client = Client(f'client_{name}', node)
            diag = client.latest_diag()
            assert float(diag['score_threshold']) == pytest.approx(want, abs=1e-4), diag
            assert int(diag['gv_min_inliers']) == point.min_inliers
            assert ('set explicitly' in node.log()) == bool(params), node.log()
        finally:
            if client is not None:
                client.close()
            assert node.stop() == 0, node.log()
