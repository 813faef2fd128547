"""
vpr_node's map life cycle over real DDS: pause, save, SIGTERM, restart with load_map, reset.

The tests run in file order and share one map directory: the first node maps the first pass,
is paused, saves on request and is stopped by SIGTERM mid-stream; the second continues that map
(a new session) and must match the revisit to the first node's keyframes; a third, made with
another model input size, must refuse the map without touching it.
"""
import json
import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import Client, NodeProcess, rows, run_to_exit, stream  # noqa: E402

from vpr_ros.map.place_map import PlaceMap  # noqa: E402
from vpr_ros.ros.node import SAVE_DELAY_ENV  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
IMAGE, POSE = '/svc/image', '/svc/pose'
BASE = {'camera_topic': IMAGE, 'pose_topic': POSE, 'pose_type': 'PoseStamped', 'qos': 'reliable',
        'autosave_period_s': 0.0}


@pytest.fixture(scope='module')
def state(tmp_path_factory) -> dict:
    tmp = str(tmp_path_factory.mktemp('svc'))
    return {'tmp': tmp, 'map': os.path.join(tmp, 'map')}


def manifest(map_dir: str) -> dict:
    with open(os.path.join(map_dir, 'CURRENT')) as f:
        gen = f.read().strip()
    with open(os.path.join(map_dir, gen, 'manifest.json')) as f:
        return json.load(f)


def _connect(client: Client) -> None:
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image
    client.wait_connected([(Image, IMAGE), (PoseStamped, POSE)])


def set_param(client: Client, node: NodeProcess, name: str, value):
    """Set one parameter of the node through its set_parameters service; the result."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return client.call(SetParameters, node.service('set_parameters'), req).results[0]


def test_pause_save_and_sigterm_mid_stream(seq, state) -> None:
    from std_srvs.srv import SetBool, Trigger
    node = NodeProcess(state['tmp'], 'vpr_svc_a', {**BASE, 'map_dir': state['map']})
    client = None
    try:
        node.wait_ready()
        # inputs chosen by remapping: the log and the diagnostics name the remapped topics
        assert f'images on {IMAGE}, poses PoseStamped on {POSE}' in node.log()
        client = Client('client_svc_a', node)
        _connect(client)
        diag = client.latest_diag()
        assert diag['image_topic'] == IMAGE and diag['pose_topic'] == POSE
        first = list(seq.first_pass)
        status = stream(client, seq, first, IMAGE, 'PoseStamped', POSE)
        state['old_ids'] = {int(s[1]) for s in status if s[2] == 1}
        state['first_stamps'] = {round(int(seq.stamps_ns[i]) / 1e9, 6) for i in first}
        assert len(state['old_ids']) >= 5

        # pause: frames are received but not processed; resume: processed again
        res = client.call(SetBool, node.service('pause'), SetBool.Request(data=True))
        assert res.success and res.message == 'paused'
        nxt = first[-1] + 1
        stream(client, seq, range(nxt, nxt + 3), IMAGE, 'PoseStamped', POSE, wait=False)
        # wait for the counter to reach what is asserted (the frames are still in flight)
        diag = client.wait_diag(lambda d: int(d['frames_paused']) >= 3, what='3 paused frames')
        assert int(diag['frames_paused']) == 3 and diag['paused'] == 'true'
        assert int(diag['frames_processed']) == len(first)
        assert not any(round(int(seq.stamps_ns[i]) / 1e9, 6) in client.status
                       for i in range(nxt, nxt + 3))
        res = client.call(SetBool, node.service('pause'), SetBool.Request(data=False))
        assert res.success and res.message == 'resumed'
        stream(client, seq, [nxt + 3], IMAGE, 'PoseStamped', POSE)

        res = client.call(Trigger, node.service('save_map'), Trigger.Request())
        assert res.success, res.message
        saved = manifest(state['map'])['count']
        assert saved == int(client.latest_diag(after=time.time())['map_size'])
        assert f'saved {saved} keyframes' in res.message

        # SIGTERM while frames keep coming: the map is saved once more, exit code 0
        more = range(nxt + 4, nxt + 12)
        stream(client, seq, more, IMAGE, 'PoseStamped', POSE, wait=False)
        client.close()
        client = None
        t0 = time.monotonic()
        assert node.stop(signal.SIGTERM) == 0, node.log()
        took = time.monotonic() - t0
        log = node.log()
        # ros2 launch escalates to SIGTERM/SIGKILL 5 s after its SIGINT: exit well inside it
        assert took < 5.0 and 'vpr_node: exit 0' in log, f'{took:.2f} s to exit:\n{log}'
        assert log.count('vpr_node: shutdown: saved') == 1, log
        final = manifest(state['map'])
        assert final['count'] >= saved and f'saved {final["count"]} keyframes' in log
    finally:
        if client is not None:
            client.close()
        node.stop()


def test_restart_continues_map_and_matches_earlier_session(seq, state) -> None:
    from std_srvs.srv import Trigger
    assert 'old_ids' in state, 'needs the previous test'
    before = manifest(state['map'])
    node = NodeProcess(state['tmp'], 'vpr_svc_b', {**BASE, 'map_dir': state['map'],
                                                   'load_map': True, 'autosave_period_s': 1.0})
    client = None
    try:
        node.wait_ready()
        assert f'with {before["count"]} keyframes, session 1' in node.log()
        client = Client('client_svc_b', node)
        _connect(client)
        # Replay the revisit 50 s earlier: inside the 30 s exclusion window of the old
        # keyframes' stamps, which must not matter, since they belong to an earlier session.
        revisit = sorted(seq.revisits)
        status = stream(client, seq, revisit, IMAGE, 'PoseStamped', POSE,
                        stamp_offset_ns=-50 * 10**9)
        client.wait_for(lambda: len(client.matches) == sum(s[3] > 0 for s in status), 10,
                        'matches')
        old = state['old_ids']
        hits = 0
        for m in client.matches:
            r = rows(m)
            assert set(r[:, 3].astype(int)) <= old, 'match outside the earlier session'
            assert {round(float(t), 6) for t in r[:, 1]} <= state['first_stamps']
            hits += 1
        assert hits >= 0.75 * len(revisit), node.log()
        new_ids = {int(s[1]) for s in status if s[2] == 1}
        assert new_ids and min(new_ids) > max(old) and min(new_ids) >= before['next_id']
        diag = client.latest_diag(after=time.time())
        assert diag['map_session'] == '1'
        client.wait_for(lambda: 'autosave: saved' in node.log(), 10, 'an autosave')

        # Live parameters (as `ros2 param set`): checked before they are set, used after.
        assert not set_param(client, node, 'score_threshold', 1.5).successful
        res = set_param(client, node, 'map_dir', '/elsewhere')
        assert not res.successful and 'read-only' in res.reason
        assert set_param(client, node, 'top_k', 1).successful
        n_before = len(client.matches)
        s = stream(client, seq, [revisit[0]], IMAGE, 'PoseStamped', POSE,
                   stamp_offset_ns=5 * 10**9)[0]
        assert s[3] == 1, 'top_k 1: one candidate at most, and the revisit has one'
        client.wait_for(lambda: len(client.matches) > n_before, 10, 'the top_k 1 match')
        assert rows(client.matches[-1]).shape[0] == 1

        res = client.call(Trigger, node.service('reset_map'), Trigger.Request())
        assert res.success and 'map reset' in res.message
        client.wait_diag(lambda d: d['map_size'] == '0', what='map_size 0 after the reset')
        i = revisit[len(revisit) // 2]
        s = stream(client, seq, [i], IMAGE, 'PoseStamped', POSE, stamp_offset_ns=10**10)[0]
        assert s[3] == 0 and s[2] == 1 and int(s[1]) > max(new_ids)  # ids never reused
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()


def test_map_of_another_model_is_refused_and_left_untouched(state) -> None:
    before = manifest(state['map'])
    listing = sorted(os.listdir(state['map']))
    with open(os.path.join(state['map'], 'CURRENT')) as f:
        current = f.read()
    res = run_to_exit({**BASE, 'map_dir': state['map'], 'load_map': True,
                       'image_size': [256, 256]}, state['tmp'], 'vpr_svc_c')
    assert res.returncode != 0
    assert "'map_dir'" in res.stderr and 'fingerprint' in res.stderr, res.stderr
    assert sorted(os.listdir(state['map'])) == listing
    with open(os.path.join(state['map'], 'CURRENT')) as f:
        assert f.read() == current
    assert manifest(state['map']) == before


def test_sigint_twice_and_during_a_slow_save_keeps_the_map(seq, tmp_path) -> None:
    """
    Ctrl-C under ros2 launch: SIGINT from the terminal and from launch, more during the save.

    The save is made slow (a test hook sleeps before it) so that signals surely arrive while it
    runs; each is logged as ignored, the save completes, the map loads, the node exits 0.
    """
    map_dir = str(tmp_path / 'map')
    node = NodeProcess(str(tmp_path), 'vpr_svc_sigint', {**BASE, 'map_dir': map_dir},
                       env={SAVE_DELAY_ENV: '3'})
    client = None
    try:
        node.wait_ready()
        client = Client('client_svc_sigint', node)
        _connect(client)
        status = stream(client, seq, list(seq.first_pass)[:6], IMAGE, 'PoseStamped', POSE)
        n_kf = sum(1 for s in status if s[2] == 1)
        assert n_kf >= 2
        client.close()
        client = None
        node.proc.send_signal(signal.SIGINT)  # the terminal's SIGINT to the process group
        node.proc.send_signal(signal.SIGINT)  # and the one launch forwards
        node.wait_log('vpr_node: shutdown: saving')
        node.proc.send_signal(signal.SIGINT)  # more while the save runs
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(60) == 0, node.log()
        log = node.log()
        during = 'ignored: shutdown in progress (saving the map)'
        assert log.count(during) >= 2, log
        assert log.rfind(during) < log.index(f'vpr_node: shutdown: saved {n_kf} keyframes'), log
        assert 'Traceback' not in log and 'KeyboardInterrupt' not in log, log
    finally:
        if client is not None:
            client.close()
        node.stop()
    m = manifest(map_dir)
    assert m['count'] == n_kf
    loaded = PlaceMap.load(map_dir, m['fingerprint'], m['dim'])
    assert len(loaded) == n_kf


def test_a_bad_remap_stops_start_up_with_a_clear_line(tmp_path) -> None:
    """Inputs are chosen by remapping: a remap rcl refuses exits 2 naming it, no traceback."""
    import subprocess

    from ros_fixtures import node_env
    res = subprocess.run([sys.executable, '-m', 'vpr_ros.ros.node', '--ros-args', '-r',
                          'camera/image_raw:=/front {camera}', '-p',
                          f'map_dir:={tmp_path / "map"}'], env=node_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert 'ROS arguments refused' in res.stderr and '/front {camera}' in res.stderr
    assert 'Traceback' not in res.stderr and not (tmp_path / 'map').exists()


def test_a_failed_shutdown_save_exits_non_zero(seq, tmp_path) -> None:
    """The map directory is gone and a file is in its place at shutdown: exit 1, say why."""
    import shutil
    map_dir = tmp_path / 'map'
    node = NodeProcess(str(tmp_path), 'vpr_svc_nosave', {**BASE, 'map_dir': str(map_dir)})
    client = None
    try:
        node.wait_ready()
        client = Client('client_svc_nosave', node)
        _connect(client)
        stream(client, seq, list(seq.first_pass)[:2], IMAGE, 'PoseStamped', POSE)
        client.close()
        client = None
        shutil.rmtree(map_dir, ignore_errors=True)
        map_dir.write_text('not a directory')
        assert node.stop(signal.SIGINT) == 1, node.log()
        log = node.log()
        assert 'vpr_node: shutdown: saving the map failed' in log and 'exit 1' in log, log
    finally:
        if client is not None:
            client.close()
        node.stop()
