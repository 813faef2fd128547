"""
Maps of other robots over real DDS (issue 20): prior maps and a merged map.

Robot 1 maps the first pass, robot 2 the way back, each in its own map directory. Robot 3, with
an empty map of its own and robot 1's map as a prior map (read-only), drives the revisit: its
loop closures are published with `prior_map` 1 and point at robot 1's keyframes, and robot 1's
map is not written. Then `vpr-map merge` joins robots 1 and 2 into one map, and robot 4
continues that merged map and closes the same loops in its own map.
"""
import hashlib
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import Client, node_env, NodeProcess, rows, stream  # noqa: E402

from vpr_ros.ros.messages import MATCH_COLUMNS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
IMAGE, POSE = '/fleet/image', '/fleet/pose'
BASE = {'camera_topic': IMAGE, 'pose_topic': POSE, 'pose_type': 'PoseStamped',
        'qos': 'reliable', 'autosave_period_s': 0.0}
COL = {name: k for k, name in enumerate(MATCH_COLUMNS.split(','))}


def _drive(tmp: str, name: str, params: dict, seq, frames, offset_s: int = 0):
    """Run a node over `frames` of the sequence; (client matches, status rows); SIGINT saves."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image

    node = NodeProcess(tmp, name, {**BASE, **params})
    client = None
    try:
        node.wait_ready()
        client = Client(f'client_{name}', node)
        client.wait_connected([(Image, IMAGE), (PoseStamped, POSE)])
        status = stream(client, seq, frames, IMAGE, 'PoseStamped', POSE,
                        stamp_offset_ns=offset_s * 10**9)
        n = sum(1 for s in status if s[3] > 0)
        client.wait_for(lambda: len(client.matches) >= n, 30, 'all matches')
        matches = list(client.matches)
    finally:
        if client is not None:
            client.close()
        assert node.stop(signal.SIGINT) == 0, node.log()
    return matches, status, node.log()


def _digest(directory: str) -> str:
    h = hashlib.sha256()
    for root, _, names in sorted(os.walk(directory)):
        for n in sorted(names):
            if n.endswith('.lock') or n == 'LOCK':
                continue
            p = os.path.join(root, n)
            h.update(p.encode())
            with open(p, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def test_loops_in_another_robots_map_and_in_a_merged_map(seq, tmp_path) -> None:
    tmp = str(tmp_path)
    a, b = os.path.join(tmp, 'robot1'), os.path.join(tmp, 'robot2')
    first = list(seq.first_pass)
    revisit = sorted(seq.revisits)
    way_back = [i for i in range(len(seq.frames)) if i not in set(first) | set(revisit)]
    first_stamps = {round(int(seq.stamps_ns[i]) / 1e9, 6) for i in first}
    _drive(tmp, 'vpr_robot1', {'map_dir': a}, seq, first)
    _drive(tmp, 'vpr_robot2', {'map_dir': b}, seq, way_back)
    before = _digest(a)

    # robot 3: its own (new) map, robot 1's map as a prior map
    matches, _, log = _drive(tmp, 'vpr_robot3', {'map_dir': os.path.join(tmp, 'robot3'),
                                                 'prior_map_dirs': a}, seq, revisit, 1000)
    assert 'prior maps (read-only): 1: robot1' in log, log
    hits = 0
    for m in matches:
        r = rows(m)
        assert r.shape[1] == len(COL)
        best = r[0]
        assert int(best[COL['prior_map']]) == 1 and int(best[COL['session']]) == 0
        assert round(float(best[COL['match_stamp']]), 6) in first_stamps
        hits += 1
    assert hits >= 0.75 * len(revisit), log
    assert _digest(a) == before, 'a prior map must never be written'

    # vpr-map merge of robots 1 and 2; robot 4 continues the merged map
    merged = os.path.join(tmp, 'merged')
    proc = subprocess.run([sys.executable, '-m', 'vpr_ros.tools.map_cli', 'merge', a, b,
                           '--out', merged], env=node_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    matches, status, log = _drive(tmp, 'vpr_robot4', {'map_dir': merged}, seq, revisit, 2000)
    assert 'session 2' in log, log  # robots 1 and 2 are sessions 0 and 1 of the merged map
    own = [rows(m)[0] for m in matches]
    assert len(own) >= 0.75 * len(revisit)
    assert all(int(r[COL['prior_map']]) == 0 for r in own)
    assert all(round(float(r[COL['match_stamp']]), 6) in first_stamps for r in own)
