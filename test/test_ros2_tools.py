"""
vpr_node under the real `ros2 launch`, driven by the real ros2 CLI, from a colcon workspace.

Issue 10: a full launch with a params file and remappings, real images over DDS, a match seen by
`ros2 topic echo` (a client nobody here wrote), `ros2 param set` of a live parameter,
`ros2 service call` of ~/save_map; Ctrl-C (SIGINT to the process group, so the node gets it
twice) five times: every run exits cleanly with its map saved, and once more with a second
Ctrl-C during a slow save; two nodes in /robot1 and /robot2
from one launch, each publishing only on its own vpr/matches; a third node on a map_dir that
another holds refuses to start. One workspace is built per session (ws_fixtures); skipped only
where ../shared/ros2-tools is absent.
"""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from launch_fixtures import Feeder, LaunchProcess, READY  # noqa: E402
from ws_fixtures import built_workspace, workspace_env  # noqa: E402

from vpr_ros.map.place_map import PlaceMap  # noqa: E402
from vpr_ros.ros.node import SAVE_DELAY_ENV  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
CTRL_C_RUNS = 5
ECHO_LAPS = 3
CLEAN = 'process has finished cleanly'
PARAMS = {'publish_status': True, 'qos': 'reliable', 'pose_type': 'PoseStamped',
          'keyframe_min_distance_m': 0.3, 'autosave_period_s': 0.0,
          'diagnostics_period_s': 0.5}


@pytest.fixture(scope='module')
def env(tmp_path_factory) -> dict:
    ws, _ = built_workspace(str(tmp_path_factory.getbasetemp()), symlink=True)
    return workspace_env(ws)


def params_file(path: str, **params) -> str:
    with open(path, 'w') as f:
        yaml.safe_dump({'/**': {'ros__parameters': {**PARAMS, **params}}}, f)
    return path


def loop_frames(seq, n_first: int = 8, n_revisit: int = 8) -> tuple[list[int], list[int]]:
    """First-pass frames and revisits of them (the revisits come > 30 s later)."""
    first = list(seq.first_pass)[:n_first]
    revisit = [i for i in sorted(seq.revisits) if seq.revisit_of[i] in first][:n_revisit]
    return first, revisit


def saved_count(map_dir: str, load: bool = True) -> int:
    """
    Count the keyframes saved in map_dir: load the map, or with `load` False read its manifest.

    Loading needs the node gone: a running node holds the directory's lock.
    """
    with open(os.path.join(map_dir, 'CURRENT')) as f:
        gen = f.read().strip()
    with open(os.path.join(map_dir, gen, 'manifest.json')) as f:
        m = json.load(f)
    if not load:
        return int(m['count'])
    place_map = PlaceMap.load(map_dir, m['fingerprint'], m['dim'])
    try:
        assert len(place_map) == m['count']
        return len(place_map)
    finally:
        place_map.close()


def ros2(env: dict, *args: str, check: bool = True, timeout: float = 120.0
         ) -> subprocess.CompletedProcess:
    """
    Run a ros2 verb; again while its own discovery has not seen the node yet.

    Without the daemon (--no-daemon) the CLI's node looks at the graph after --spin-time; on a
    loaded machine that can be before discovery saw vpr_node ('Node not found').
    """
    end = time.monotonic() + timeout
    while True:
        proc = subprocess.run(['ros2', *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        if 'Node not found' not in proc.stderr or time.monotonic() > end:
            break
    assert not check or proc.returncode == 0, \
        f'ros2 {" ".join(args)}: {proc.stdout}\n{proc.stderr}'
    return proc


def test_launch_params_remaps_echo_param_service(env, seq, tmp_path) -> None:
    image, pose = '/cam_t/image_raw', '/cam_t/pose'
    cfg = params_file(str(tmp_path / 'p.yaml'), map_dir=str(tmp_path / 'map'))
    launch = LaunchProcess(env, ['vpr_ros', 'vpr.launch.py', f'params_file:={cfg}',
                                 f'camera_topic:={image}', f'pose_topic:={pose}'],
                           str(tmp_path / 'launch.log'))
    feeder = echo = None
    try:
        log = launch.wait_log(READY)
        assert image in log and pose in log, log  # the node names the resolved topics
        feeder = Feeder('feeder_full', watch_matches=('/vpr/matches',))
        feeder.wait_connected(image, pose)
        echo_log = tmp_path / 'echo.log'
        with open(echo_log, 'w') as out:
            # reliable, as a SLAM back-end subscribes (echo's default is best effort)
            echo = subprocess.Popen(['ros2', 'topic', 'echo', '--once', '--no-daemon',
                                     '--qos-reliability', 'reliable', '/vpr/matches',
                                     'std_msgs/msg/Float64MultiArray'], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        feeder.wait_for(lambda: any(
            i.node_name != 'feeder_full'
            for i in feeder.node.get_subscriptions_info_by_topic('/vpr/matches')), 60,
            'ros2 topic echo subscribed to /vpr/matches')
        first, revisit = loop_frames(seq)
        feeder.send(seq, first, image, pose)
        queries = set()
        # The node publishes each match once (volatile); a subscriber whose DDS match with the
        # node's writer is still pending misses it, as any late joiner would. So the revisit is
        # driven again (later stamps) until echo has its message, a bounded number of times.
        for lap in range(ECHO_LAPS):
            offset = lap * 1000 * 10**9
            feeder.send(seq, revisit, image, pose, offset_ns=offset)
            queries |= {round((int(seq.stamps_ns[i]) + offset) / 1e9, 6) for i in revisit}
            feeder.wait_for(lambda: feeder.matches['/vpr/matches'], 30, 'a match')
            try:
                echo.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                print(f'ros2 topic echo: nothing yet after lap {lap}')
        else:
            raise AssertionError(f'ros2 topic echo got no match in {ECHO_LAPS} laps; the feeder '
                                 f'got {len(feeder.matches["/vpr/matches"])}; echo output:\n'
                                 f'{echo_log.read_text()}\n{launch.log()}')
        out = echo_log.read_text()
        msg = next(yaml.safe_load_all(out.split('---')[0]))
        assert msg['layout']['dim'][1]['label'].startswith(
            'query_stamp,match_stamp,score,match_id,query_id,'), out
        query_stamp, match_stamp = msg['data'][0], msg['data'][1]
        assert round(query_stamp, 6) in queries, out
        places = {round(int(seq.stamps_ns[i]) / 1e9, 6) for i in first} | queries
        assert round(match_stamp, 6) in places, out

        set_ = ros2(env, 'param', 'set', '--no-daemon', '/vpr_node', 'score_threshold', '0.55')
        assert 'Set parameter successful' in set_.stdout, set_.stdout
        got = ros2(env, 'param', 'get', '--no-daemon', '/vpr_node', 'score_threshold')
        assert 'Double value is: 0.55' in got.stdout, got.stdout
        bad = ros2(env, 'param', 'set', '--no-daemon', '/vpr_node', 'top_k', '0', check=False)
        assert 'Setting parameter failed' in bad.stdout + bad.stderr, bad  # out of range

        call = ros2(env, 'service', 'call', '/vpr_node/save_map', 'std_srvs/srv/Trigger')
        assert 'success=True' in call.stdout, call.stdout
        n_keyframes = saved_count(str(tmp_path / 'map'), load=False)
        assert n_keyframes >= len(first), call.stdout

        launch.interrupt()
        assert launch.wait() == 0, launch.log()
        assert CLEAN in launch.log(), launch.log()
    finally:
        if echo is not None and echo.poll() is None:
            echo.kill()
            echo.wait()
        if feeder is not None:
            feeder.close()
        launch.close()


def test_ctrl_c_under_launch_always_saves_the_map(env, seq, tmp_path) -> None:
    """Five runs continuing one map: each Ctrl-C saves it; the next run finds all keyframes."""
    image, pose = 'camera/image_raw', 'pose'  # the node's defaults, no remaps
    map_dir = str(tmp_path / 'map')
    cfg = params_file(str(tmp_path / 'p.yaml'), map_dir=map_dir, load_map=True)
    frames = list(seq.first_pass)
    expected = 0
    for run in range(CTRL_C_RUNS):
        launch = LaunchProcess(env, ['vpr_ros', 'vpr.launch.py', f'params_file:={cfg}'],
                               str(tmp_path / f'launch{run}.log'))
        feeder = None
        try:
            launch.wait_log(READY)
            feeder = Feeder(f'feeder_ctrl_c_{run}')
            feeder.wait_connected('/' + image, '/' + pose)
            # new frames each run: a later stamp than the last run's keyframes
            batch = frames[(3 * run) % len(frames):][:3]
            status = feeder.send(seq, batch, '/' + image, '/' + pose,
                                 offset_ns=run * 1000 * 10**9)
            expected += sum(int(s[2]) for s in status)
            feeder.close()
            feeder = None
            t0 = time.monotonic()
            launch.interrupt()
            rc = launch.wait()
            took = time.monotonic() - t0
            log = launch.log()
            assert rc == 0 and CLEAN in log, f'run {run}: launch exit {rc}:\n{log}'
            assert "sending signal 'SIGTERM'" not in log, f'run {run}: escalated:\n{log}'
            assert saved_count(map_dir) == expected, f'run {run}:\n{log}'
            print(f'run {run}: Ctrl-C to launch exit {took:.2f} s, {expected} keyframes saved')
        finally:
            if feeder is not None:
                feeder.close()
            launch.close()


def test_second_ctrl_c_during_a_slow_save_under_launch(env, seq, tmp_path) -> None:
    """Ctrl-C, then Ctrl-C again while the node saves: launch ignores it, the node too; saved."""
    map_dir = str(tmp_path / 'map')
    cfg = params_file(str(tmp_path / 'p.yaml'), map_dir=map_dir)
    slow = {**env, SAVE_DELAY_ENV: '3'}  # test hook: the save waits 3 s before writing
    launch = LaunchProcess(slow, ['vpr_ros', 'vpr.launch.py', f'params_file:={cfg}'],
                           str(tmp_path / 'launch.log'))
    feeder = None
    try:
        launch.wait_log(READY)
        feeder = Feeder('feeder_slow_save')
        feeder.wait_connected('/camera/image_raw', '/pose')
        status = feeder.send(seq, list(seq.first_pass)[:3], '/camera/image_raw', '/pose')
        feeder.close()
        feeder = None
        launch.interrupt()
        launch.wait_log('vpr_node: shutdown: saving')
        launch.interrupt()  # during the save: 2nd and 3rd SIGINT for the node
        assert launch.wait() == 0, launch.log()
        log = launch.log()
        assert CLEAN in log and 'ignored: shutdown in progress' in log, log
        assert saved_count(map_dir) == sum(int(s[2]) for s in status), log
    finally:
        if feeder is not None:
            feeder.close()
        launch.close()


TWO_ROBOTS = textwrap.dedent('''\
    import os
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import GroupAction, IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource


    def generate_launch_description():
        vpr = os.path.join(get_package_share_directory('vpr_ros'), 'launch', 'vpr.launch.py')
        return LaunchDescription([
            GroupAction([IncludeLaunchDescription(
                PythonLaunchDescriptionSource(vpr),
                launch_arguments={'namespace': ns, 'params_file': params}.items())],
                scoped=True)
            for ns, params in ROBOTS])
    ''')


def test_two_robots_in_namespaces_and_map_dir_lock(env, seq, tmp_path) -> None:
    robots = {'/robot1': 0, '/robot2': 5000 * 10**9}  # namespace -> stamp offset of its frames
    cfgs = {ns: params_file(str(tmp_path / f'{ns[1:]}.yaml'), map_dir=str(tmp_path / ns[1:]))
            for ns in robots}
    launch_file = tmp_path / 'two_robots.launch.py'
    launch_file.write_text(TWO_ROBOTS.replace('ROBOTS', repr(sorted(cfgs.items()))))
    launch = LaunchProcess(env, [str(launch_file)], str(tmp_path / 'launch.log'))
    watch = ('/vpr/matches',) + tuple(f'{ns}/vpr/matches' for ns in robots)
    feeders = {}
    third = None
    try:
        launch.wait_log(READY, count=2)
        first, revisit = loop_frames(seq, n_first=5, n_revisit=3)
        sent = {}
        for k, (ns, offset) in enumerate(robots.items()):
            feeders[ns] = Feeder(f'feeder_robot{k}', ns, watch if k == 0 else ())
            feeders[ns].wait_connected(f'{ns}/camera/image_raw', f'{ns}/pose')
        for ns, offset in robots.items():
            f = feeders[ns]
            f.send(seq, first, f'{ns}/camera/image_raw', f'{ns}/pose', offset)
            f.send(seq, revisit, f'{ns}/camera/image_raw', f'{ns}/pose', offset)
            sent[ns] = {round((int(seq.stamps_ns[i]) + offset) / 1e9, 6) for i in revisit}
        obs = feeders['/robot1']
        obs.wait_for(lambda: all(obs.matches[f'{ns}/vpr/matches'] for ns in robots), 30,
                     "matches on both robots' topics")
        for ns in robots:
            queries = {round(float(t), 6) for r in obs.matches[f'{ns}/vpr/matches']
                       for t in r[:, 0]}
            assert queries <= sent[ns], f"{ns}/vpr/matches carries another robot's frames"
        assert not obs.matches['/vpr/matches'], 'a namespaced node published on /vpr/matches'

        # A third node on robot1's map_dir (held by the running node) must refuse to start.
        third = LaunchProcess(env, ['vpr_ros', 'vpr.launch.py', 'namespace:=/robot3',
                                    f'params_file:={cfgs["/robot1"]}'],
                              str(tmp_path / 'third.log'))
        third.proc.wait(180)
        log = third.log()
        assert 'exit code 2' in log and str(tmp_path / 'robot1') in log, log
        assert READY not in log, log

        launch.interrupt()
        assert launch.wait() == 0, launch.log()
        assert launch.log().count(CLEAN) == 2, launch.log()
        for ns in robots:
            assert saved_count(str(tmp_path / ns[1:])) >= len(first)
    finally:
        for f in feeders.values():
            f.close()
        if third is not None:
            third.close()
        launch.close()
