"""
One decision path: the node over DDS and `vpr-eval --loop` accept the same pairs (issue 18).

The loop evaluation replays frames through the node's own detector and decides them with the
node's `decide` at the point the node runs (training/eval/loop_replay.py). So the same sequence
played into `vpr_node` at its defaults and given to `evaluate_loop` must give the same accepted
(query frame, map frame) pairs, row for row: on the real corridor played as a loop (no poses)
and on the simulated demo loop (bag with odometry, played by vpr-play paced on the node).
"""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import Client, node_env, NodeProcess, rows  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
S = 10**9
T0 = 1_700_000_000 * S


def _node_pairs(matches, frame_of_stamp: dict) -> list[list[int]]:
    """Every /vpr/matches row as [query frame, match frame], in publication order."""
    out = []
    for m in matches:
        for r in rows(m):
            out.append([frame_of_stamp[round(r[0], 6)], frame_of_stamp[round(r[1], 6)]])
    return sorted(out, key=lambda p: p[0])  # one message per query, in stamp order


def _eval_pairs(report: dict) -> list[list[int]]:
    return report['rows'][0]['at_point']['pairs']


def test_corridor_as_a_loop_node_and_eval_agree(corridor_dir, tmp_path) -> None:
    from sensor_msgs.msg import Image

    from vpr_ros.training.data.folder_pair import read_folder_pair
    from vpr_ros.training.eval.embedding import read_rgb
    from vpr_ros.training.eval.loop_mode import evaluate_loop

    report = evaluate_loop(folder=corridor_dir, rate_hz=1.0, device='cpu', progress=False,
                           verbose=False)
    refs, queries, _ = read_folder_pair(corridor_dir, None)
    paths = refs + queries
    node = NodeProcess(str(tmp_path), 'vpr_agree_corridor',
                       {'pose_type': 'none', 'qos': 'reliable', 'map_dir': ''})
    client = None
    try:
        node.wait_ready()
        client = Client('client_agree_corridor', node)
        topic = node.topic('camera/image_raw')
        client.wait_connected([(Image, topic)])
        pub = client.publisher(Image, topic)
        n_matches = 0
        for i, p in enumerate(paths):  # the evaluation's own image reader: the same pixels
            pub.publish(client.image_msg(read_rgb(p), T0 + i * S))
            n_matches += client.wait_status(T0 + i * S)[3] > 0
        client.wait_for(lambda: len(client.matches) >= n_matches, 30, 'all matches')
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()
    frame_of = {round((T0 + i * S) / 1e9, 6): i for i in range(len(paths))}
    got, want = _node_pairs(client.matches, frame_of), _eval_pairs(report)
    at = report['rows'][0]['at_point']
    print(f'corridor as a loop: node {len(got)} accepted rows, vpr-eval --loop {len(want)}; '
          f'precision {at["precision"]:.3f}, recall {at["recall"]:.3f}, by rule {at["by_rule"]}')
    assert got == want
    assert want, 'nothing accepted: the comparison would prove nothing'


def _demo_bag() -> str:
    code = ('from vpr_ros.sim.dataset import default_dataset; '
            'p = default_dataset(log=lambda *a, **k: None); '
            "print(p.bags[p.names.index('day_loop')])")
    proc = subprocess.run([sys.executable, '-c', code], env=node_env(), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_demo_loop_node_and_eval_agree(tmp_path) -> None:
    from vpr_ros.sim.writers import GT_TOPIC, ODOM_TOPIC
    from vpr_ros.training.eval.loop_mode import evaluate_loop

    bag = _demo_bag()
    report = evaluate_loop([bag], topics=(None, GT_TOPIC, ODOM_TOPIC), device='cpu',
                           out_dir=str(tmp_path / 'eval'), progress=False, verbose=False)
    # pose_wait_s: the pose of each frame reaches the node before its frame is processed
    # however loaded the machine (the bag carries a pose at every image stamp).
    node = NodeProcess(str(tmp_path), 'vpr_agree_demo',
                       {'pose_type': 'Odometry', 'qos': 'reliable', 'map_dir': '',
                        'pose_wait_s': 1.0})
    client = None
    ns = node.namespace
    try:
        node.wait_ready()
        client = Client('client_agree_demo', node)
        client.wait_connected([])  # our status reader matched before the first frame is played
        play = subprocess.run(
            [sys.executable, '-m', 'vpr_ros.ros.bag_player', bag, '--rate', '0',
             '--topics', '/camera/image_raw', ODOM_TOPIC, '--qos', 'reliable',
             '--remap', f'/camera/image_raw:={ns}/camera/image_raw', f'{ODOM_TOPIC}:={ns}/odom',
             '--pace-topic', f'{ns}/vpr/status', '--pace-type',
             'std_msgs/msg/Float64MultiArray', '--paced-topic', '/camera/image_raw',
             '--pace-timeout', '60', '--wait-topics', ODOM_TOPIC],
            env=node_env(), capture_output=True, text=True, timeout=1800)
        assert play.returncode == 0 and 'paced timeouts: 0' in play.stdout, \
            play.stdout[-2000:] + play.stderr[-2000:]
        n = report['dataset']['n_frames']
        client.wait_for(lambda: len(client.status) >= n, 120, 'a status row per frame')
        n_matches = sum(1 for r in client.status.values() if r[3] > 0)
        client.wait_for(lambda: len(client.matches) >= n_matches, 30, 'all matches')
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()
    stamps = sorted(client.status)  # one row per frame, the bag's image stamps
    assert len(stamps) == report['dataset']['n_frames']
    frame_of = {t: i for i, t in enumerate(stamps)}
    got, want = _node_pairs(client.matches, frame_of), _eval_pairs(report)
    at = report['rows'][0]['at_point']
    print(f'demo loop: node {len(got)} accepted rows, vpr-eval --loop {len(want)}; precision '
          f'{at["precision"]:.3f}, recall {at["recall"]:.3f}, by rule {at["by_rule"]}')
    assert got == want
    assert want, 'nothing accepted: the comparison would prove nothing'
