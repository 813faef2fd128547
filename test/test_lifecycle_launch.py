"""
The managed node and the per-node map_dir under the real `ros2 launch`, from a colcon workspace.

Issue 20: `lifecycle:=true` starts `vpr_lifecycle_node`, driven here by the real `ros2 lifecycle`
CLI through configure -> activate (frames in, matches out) -> deactivate (unsubscribed) ->
cleanup (the map saved and map_dir released while the process runs: it loads here), then once
more configure -> activate and Ctrl-C, which saves the map once. Two launches at their defaults
under /robot1 and /robot2 (HOME in a temporary folder) both run and save to their own map_dir;
before, the second exited 'in use'. Node parameters given as launch arguments reach the node
(`publish_status:=true`...), and a bad one (`top_k:=5.5`) stops the launch naming it instead
of being dropped. One workspace is built per session (ws_fixtures).
"""
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from launch_fixtures import Feeder, LaunchProcess, READY  # noqa: E402
from test_ros2_tools import CLEAN, loop_frames, saved_count  # noqa: E402
from ws_fixtures import built_workspace, workspace_env  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
S = 10**9
# Node parameters as launch arguments (checked by the launch file against the node's table).
PARAMS = ['publish_status:=true', 'qos:=reliable', 'pose_type:=PoseStamped',
          'keyframe_min_distance_m:=0.3', 'autosave_period_s:=0.0', 'diagnostics_period_s:=0.5']
IMAGE, POSE = '/camera/image_raw', '/pose'
SAVING = 'vpr_node: shutdown: saving'


@pytest.fixture(scope='module')
def env(tmp_path_factory) -> dict:
    ws, _ = built_workspace(str(tmp_path_factory.getbasetemp()), symlink=True)
    return workspace_env(ws)


def lifecycle(env: dict, *args: str, timeout: float = 180.0) -> str:
    """
    Run `ros2 lifecycle ARGS` (set or get), again while its discovery has not seen the node.

    Return its output; fail unless it succeeded.
    """
    end = time.monotonic() + timeout
    while True:
        proc = subprocess.run(['ros2', 'lifecycle', *args[:1], '--no-daemon', '--spin-time',
                               '2', *args[1:]], env=env, capture_output=True, text=True,
                              timeout=timeout)
        out = proc.stdout + proc.stderr
        if 'Node not found' not in out or time.monotonic() > end:
            break
    assert proc.returncode == 0 and 'failed' not in out.lower(), f'ros2 lifecycle {args}: {out}'
    return out


def transition(env: dict, node: str, name: str, state: str) -> None:
    """`ros2 lifecycle set` one transition, then check the state with `ros2 lifecycle get`."""
    assert 'Transitioning successful' in lifecycle(env, 'set', node, name)
    got = lifecycle(env, 'get', node)
    assert got.startswith(state), got


def test_lifecycle_node_through_the_ros2_lifecycle_cli(env, seq, tmp_path) -> None:
    map_dir = str(tmp_path / 'map')
    launch = LaunchProcess(env, ['vpr_ros', 'vpr.launch.py', 'lifecycle:=true',
                                 f'map_dir:={map_dir}', *PARAMS], str(tmp_path / 'launch.log'))
    feeder = None
    try:
        assert lifecycle(env, 'get', '/vpr_node').startswith('unconfigured'), launch.log()
        transition(env, '/vpr_node', 'configure', 'inactive')
        assert 'vpr_node configured' in launch.log() and READY not in launch.log()
        transition(env, '/vpr_node', 'activate', 'active')
        launch.wait_log(READY)
        feeder = Feeder('feeder_lifecycle', watch_matches=('/vpr/matches',))
        feeder.wait_connected(IMAGE, POSE)
        first, revisit = loop_frames(seq)
        status = feeder.send(seq, first, IMAGE, POSE) + feeder.send(seq, revisit, IMAGE, POSE)
        feeder.wait_for(lambda: feeder.matches['/vpr/matches'], 30, 'a match')
        keyframes = sum(int(s[2]) for s in status)

        transition(env, '/vpr_node', 'deactivate', 'inactive')
        from sensor_msgs.msg import Image
        images = feeder.publisher(Image, IMAGE)
        feeder.wait_for(lambda: images.get_subscription_count() == 0, 30, 'unsubscribed')
        transition(env, '/vpr_node', 'cleanup', 'unconfigured')
        assert 'map_dir released' in launch.log(), launch.log()
        assert saved_count(map_dir) == keyframes  # loads: the running node let go of it

        # Once more, then Ctrl-C: the map is saved once, both sessions in it.
        transition(env, '/vpr_node', 'configure', 'inactive')
        transition(env, '/vpr_node', 'activate', 'active')
        launch.wait_log(READY, count=2)
        feeder.wait_connected(IMAGE, POSE)
        status = feeder.send(seq, first[:3], IMAGE, POSE, offset_ns=1000 * S)
        keyframes += sum(int(s[2]) for s in status)
        launch.interrupt()
        assert launch.wait() == 0, launch.log()
        log = launch.log()
        assert CLEAN in log and log.count(SAVING) == 1, log
        assert saved_count(map_dir) == keyframes, log
    finally:
        if feeder is not None:
            feeder.close()
        launch.close()


def test_two_robots_at_their_defaults_keep_separate_maps(env, seq, tmp_path) -> None:
    """The default map_dir holds namespace and node name: no 'in use', no shared map."""
    import torch

    home = tmp_path / 'home'
    home.mkdir()
    # Nothing is written in the real home; the model's ImageNet weights stay where they are.
    env = {**env, 'HOME': str(home), 'TORCH_HOME': os.path.dirname(torch.hub.get_dir())}
    robots = {'/robot1': 0, '/robot2': 5000 * S}  # namespace -> stamp offset of its frames
    launches = {ns: LaunchProcess(env, ['vpr_ros', 'vpr.launch.py', f'namespace:={ns}',
                                        *PARAMS], str(tmp_path / f'{ns[1:]}.log'))
                for ns in robots}
    feeders = []
    try:
        expected = {}
        for ns, offset in robots.items():
            log = launches[ns].wait_log(READY)
            map_dir = home / '.ros' / 'vpr_ros' / ns[1:] / 'vpr_node' / 'map'
            assert str(map_dir) in log, log
            feeders.append(Feeder(f'feeder_{ns[1:]}', ns))
            feeders[-1].wait_connected(ns + IMAGE, ns + POSE)
            status = feeders[-1].send(seq, list(seq.first_pass)[:3], ns + IMAGE, ns + POSE,
                                      offset_ns=offset)
            expected[map_dir] = sum(int(s[2]) for s in status)
        for launch in launches.values():
            launch.interrupt()
        for ns, launch in launches.items():
            assert launch.wait() == 0 and CLEAN in launch.log(), launch.log()
        for map_dir, n in expected.items():
            assert n > 0 and saved_count(str(map_dir)) == n
        assert sorted(os.listdir(home / '.ros' / 'vpr_ros')) == ['robot1', 'robot2']
    finally:
        for f in feeders:
            f.close()
        for launch in launches.values():
            launch.close()


def test_a_bad_parameter_argument_stops_the_launch(env, tmp_path) -> None:
    """`top_k:=5.5` used to be dropped by launch without a word and the node ran with 5."""
    proc = subprocess.run(['ros2', 'launch', 'vpr_ros', 'vpr.launch.py', 'top_k:=5.5',
                           f'map_dir:={tmp_path / "map"}'], env=env, capture_output=True,
                          text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "launch argument refused: parameter 'top_k': 5.5 is not accepted" in out, out
    assert 'process started' not in out and not (tmp_path / 'map').exists(), out
