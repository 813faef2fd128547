"""
vpr_node over real DDS finds the revisit of a real-photo sequence and publishes the contract.

The node runs in a subprocess; this process publishes the sequence (poses first) and paces on
the node's per-frame /vpr/status. Three set-ups: raw images + PoseStamped (reliable QoS, LIO-SAM
output on), JPEG CompressedImage + Odometry (default sensor-data QoS), raw images without any
pose topic.
"""
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import Client, NodeProcess, rows, stream  # noqa: E402

from vpr_ros.ros.node import MATCH_COLUMNS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
EXCLUSION_S = 30.0
VARIANTS = {
    'raw_posestamped': dict(image_transport='raw', pose_type='PoseStamped', qos='reliable',
                            loop_closure_output=True),
    'jpeg_odometry': dict(image_transport='compressed', pose_type='Odometry'),
    'raw_no_pose': dict(image_transport='raw', pose_type='none', qos='reliable'),
}


@pytest.fixture(scope='module', params=list(VARIANTS))
def run(request, seq, tmp_path_factory):
    """One node per variant; the whole sequence streamed once, outputs collected."""
    name = f'vpr_{request.param}'
    tmp = str(tmp_path_factory.mktemp(name))
    cfg = VARIANTS[request.param]
    # No remaps: the node's relative default topics, resolved in its namespace /<name>.
    node = NodeProcess(tmp, name, {**cfg, 'exclusion_window_s': EXCLUSION_S,
                                   'map_dir': os.path.join(tmp, 'map')})
    client = None
    try:
        node.wait_ready()
        client = Client(f'client_{request.param}', node)
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import CompressedImage, Image
        compressed = cfg['image_transport'] == 'compressed'
        inputs = [(CompressedImage if compressed else Image,
                   node.topic('camera/image_raw' + ('/compressed' if compressed else '')))]
        pose_topic = ''
        if cfg['pose_type'] != 'none':
            odom = cfg['pose_type'] == 'Odometry'
            pose_topic = node.topic('odom' if odom else 'pose')
            inputs.append((Odometry if odom else PoseStamped, pose_topic))
        assert f'images on {inputs[0][1]}, poses {cfg["pose_type"]} on ' \
               f'{pose_topic or "(none)"}' in node.log()
        client.wait_connected(inputs)
        t_start = time.time()
        status = stream(client, seq, range(len(seq)), inputs[0][1], cfg['pose_type'],
                        pose_topic, cfg['image_transport'])
        n_matches = sum(1 for s in status if s[3] > 0)
        client.wait_for(lambda: len(client.matches) >= n_matches, 30, 'all matches')
        diag = client.wait_diag(lambda d: int(d['frames_processed']) == len(seq)
                                and int(d['matches_published']) >= n_matches,
                                what='diagnostics counting the whole sequence')
        assert diag['image_topic'] == inputs[0][1] and diag['pose_topic'] == pose_topic
        client.wait_for(lambda: client.markers, 30, '/vpr/markers')
        yield dict(cfg=cfg, status=status, client=client, diag=diag, node=node,
                   t_start=t_start)
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()


def _by_stamp(seq) -> dict[float, int]:
    return {round(int(t) / 1e9, 6): i for i, t in enumerate(seq.stamps_ns)}


def test_matches_layout_is_the_contract(run) -> None:
    msgs = run['client'].matches
    assert msgs, run['node'].log()
    for m in msgs:
        d = m.layout.dim
        assert len(d) == 2 and m.layout.data_offset == 0
        k = d[0].size
        w = len(MATCH_COLUMNS.split(','))
        assert MATCH_COLUMNS.startswith('query_stamp,match_stamp,score,match_id,query_id,')
        assert d[0].label == 'candidates' and k >= 1 and d[0].stride == w * k
        assert d[1].label == MATCH_COLUMNS and d[1].size == w and d[1].stride == w
        assert len(m.data) == w * k
        r = rows(m)
        assert np.all(np.diff(r[:, 2]) <= 0), 'rows must be best first'
        assert np.all(r[:, 0] == r[0, 0]) and np.all(r[:, 4] == r[0, 4])
        assert np.all(r[:, 2] >= 0.8) and np.all(r[:, 3] >= 0)
        assert np.all(r[:, 3] == np.round(r[:, 3]))


def test_one_message_per_query_with_candidates(run) -> None:
    with_cands = [round(float(s[0]), 6) for s in run['status'] if s[3] > 0]
    got = [round(float(rows(m)[0, 0]), 6) for m in run['client'].matches]
    assert got == with_cands


def test_revisit_matched_to_the_right_place_outside_exclusion(run, seq) -> None:
    idx = _by_stamp(seq)
    best = {}
    for m in run['client'].matches:
        r = rows(m)
        qi = idx[round(float(r[0, 0]), 6)]
        for row in r:
            assert abs(row[0] - row[1]) > EXCLUSION_S, 'candidate inside the exclusion window'
            j = idx[round(float(row[1]), 6)]  # a match stamp is an image stamp of the sequence
            # lower ranks may be neighbours of the place, but always on the revisited wall
            assert qi in seq.revisits and j in seq.first_pass, (qi, j)
        best[qi] = idx[round(float(r[0, 1]), 6)]
    revisit = sorted(seq.revisits)
    hits = [i for i in revisit if i in best and best[i] in seq.revisits[i]]
    need = 0.75 if run['cfg']['pose_type'] != 'none' else 0.5
    assert len(hits) >= need * len(revisit), (hits, best, revisit)
    assert set(best) <= set(revisit), 'a match outside the revisit'


def test_query_id_is_keyframe_id_or_minus_one(run) -> None:
    status = {round(float(s[0]), 6): s for s in run['status']}
    for m in run['client'].matches:
        r = rows(m)
        s = status[round(float(r[0, 0]), 6)]
        assert r[0, 4] == s[1]
        assert (s[2] == 1) == (r[0, 4] >= 0)
        assert np.all(r[:, 3] < r[0, 4]) or r[0, 4] == -1  # matched keyframes are older


def test_loop_closure_output_is_best_candidate(run) -> None:
    loops = run['client'].loops
    if not run['cfg'].get('loop_closure_output'):
        assert not loops
        return
    run['client'].wait_for(lambda: len(loops) >= len(run['client'].matches), 10, 'loops')
    for lc, m in zip(loops, run['client'].matches):
        assert list(lc.data) == pytest.approx(list(rows(m)[0, :2]))


def test_diagnostics_report_the_run(run, seq) -> None:
    d = run['diag']
    assert int(d['frames_processed']) == len(seq)
    assert int(d['frames_received']) == len(seq)
    assert int(d['frames_dropped']) == 0
    assert int(d['map_size']) == sum(1 for s in run['status'] if s[2] == 1)
    assert int(d['matches_published']) == len(run['client'].matches)
    assert d['device'] == 'cpu'
    assert float(d['core_p50_ms']) > 0 and float(d['latency_p95_ms']) >= float(
        d['latency_p50_ms'])
    for key in ('input_rate_hz', 'bad_encoding', 'bad_image_data', 'bad_pose', 'no_pose'):
        assert key in d
    if run['cfg']['pose_type'] == 'none':
        assert int(d['no_pose']) == 0  # no pose topic configured: not a fault
    else:
        assert int(d['no_pose']) == 0 and d['pose_stale'] in ('true', 'false')


def test_markers_show_keyframes_and_loop_closures(run) -> None:
    from visualization_msgs.msg import Marker
    client = run['client']
    if run['cfg']['pose_type'] == 'none':
        return  # keyframes have no position without poses
    n_kf = int(run['diag']['map_size'])

    def complete():
        for m in reversed(client.markers):
            kinds = {x.type: x for x in m.markers}
            if (Marker.LINE_LIST in kinds and Marker.SPHERE_LIST in kinds
                    and len(kinds[Marker.SPHERE_LIST].points) == n_kf):
                return kinds
        return None
    kinds = client.wait_for(complete, 10, f'markers with {n_kf} keyframes and loop lines')
    assert kinds[Marker.SPHERE_LIST].header.frame_id == 'odom'
    assert kinds[Marker.LINE_LIST].header.frame_id == 'odom'
    assert len(kinds[Marker.LINE_LIST].points) % 2 == 0
