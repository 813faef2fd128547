"""Tests of the simulated garden: determinism, conditions, bag/folder agreement, revisits, CLI."""
import json
import os

import numpy as np
import pytest

pytest.importorskip('pyrender')

from conftest import SIM_SIZE  # noqa: E402

from vpr_ros.sim import cli  # noqa: E402
from vpr_ros.sim.conditions import parse_condition  # noqa: E402
from vpr_ros.sim.dataset import cached_dataset, generate, SimParams, TraverseConfig  # noqa: E402
from vpr_ros.sim.scene import GardenScene, Intrinsics  # noqa: E402
from vpr_ros.sim.world import generate_world  # noqa: E402
from vpr_ros.sim.writers import IMAGE_TOPIC, INFO_TOPIC, ODOM_TOPIC, read_bag_poses  # noqa: E402

W, H = SIM_SIZE   # the conftest renderer's
# Looking east along the southern path from its west end, and north up the central path.
POSES = [[-13.0, -14.0, 1.0, 0.0, 0.0, 0.0, 1.0],
         [0.0, -10.0, 1.0, 0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)]]


def _render(seed, condition, renderer, poses=POSES):
    scene = GardenScene(generate_world(seed), parse_condition(condition),
                        Intrinsics.from_hfov(W, H), renderer=renderer, noise_seed=seed)
    return [scene.render(p, i)[0] for i, p in enumerate(poses)]


def test_deterministic_for_a_seed(renderer):
    a = _render(0, 'noon', renderer)
    b = _render(0, 'noon', renderer)
    c = _render(1, 'noon', renderer)
    for x, y in zip(a, b):
        assert x.dtype == np.uint8 and x.shape == (H, W, 3)
        assert x.tobytes() == y.tobytes()
    assert any(x.tobytes() != z.tobytes() for x, z in zip(a, c))


def test_images_not_blank_and_conditions_change_them(renderer):
    noon = _render(0, 'noon', renderer)
    fog = _render(0, 'noon,fog=15', renderer)
    autumn = _render(0, 'noon,season=autumn', renderer)
    evening = _render(0, 'evening', renderer)
    for img in noon:
        assert img.std() > 20.0                        # sky, lawn, path and hedges, not flat
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500
    for other in (fog, autumn, evening):
        diff = np.abs(noon[0].astype(int) - other[0].astype(int)).mean()
        assert diff > 4.0
    # fog lowers contrast
    assert fog[0].std() < noon[0].std()


def _index(path):
    try:
        from vpr_ros.training.data.dataset import load_traverse
    except ImportError:
        with open(path) as f:
            data = json.load(f)
        root = os.path.join(os.path.dirname(path), data['im_prefix'])
        return [os.path.join(root, p) for p in data['im_paths']], np.array(data['poses'])
    t = load_traverse(path)
    return t.image_paths, t.poses


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('sim') / 'set')
    params = SimParams(width=W, height=H, rate_hz=1.0, pose_rate_hz=4.0, odom_drift=0.05,
                       traverses=(TraverseConfig('loop', 'loop_once', 'noon'),
                                  TraverseConfig('back', ('C', 'S'), 'fog')))
    return generate(params, out, log=lambda *_: None)


def test_every_named_route_is_drivable():
    from vpr_ros.sim.trajectories import route_nodes, ROUTES, sample_traverse, TraverseSpec
    world = generate_world(0)
    for name in ROUTES:
        assert len(route_nodes(name, world)) == len(ROUTES[name])
        stamps, poses = sample_traverse(TraverseSpec(route=name), world)
        assert len(stamps) == len(poses) > 10 and np.isfinite(poses).all(), name


def test_bag_and_folder_agree(small_set):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import get_typestore, Stores
    ts = get_typestore(Stores.ROS2_HUMBLE)
    assert len(small_set.indices) == len(small_set.bags) == 2
    for index, bag in zip(small_set.indices, small_set.bags):
        paths, poses = _index(index)
        assert len(paths) == len(poses) > 3 and all(os.path.isfile(p) for p in paths)
        gt_stamps, gt = read_bag_poses(bag)
        with open(os.path.join(bag, 'metadata.yaml')) as f:
            assert 'storage_identifier: mcap' in f.read()
        with Reader(bag) as reader:
            conns = {c.topic: c for c in reader.connections}
            img_stamps, infos = [], []
            for conn, _, raw in reader.messages(connections=[conns[IMAGE_TOPIC],
                                                             conns[INFO_TOPIC]]):
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                st = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                if conn.topic == IMAGE_TOPIC:
                    assert (msg.encoding, msg.width, msg.height) == ('rgb8', W, H)
                    img_stamps.append(st)
                else:
                    infos.append(msg)
        assert len(img_stamps) == len(poses) == len(infos)
        assert infos[0].k[0] == pytest.approx(W / 2.0)       # 90 deg horizontal FoV
        at = np.searchsorted(gt_stamps, img_stamps)
        assert np.array_equal(gt_stamps[at], img_stamps)    # a pose at every image stamp
        np.testing.assert_allclose(gt[at], poses, atol=1e-9)
        _, odom = read_bag_poses(bag, ODOM_TOPIC)
        drift = np.linalg.norm(odom[:, :2] - gt[:, :2], axis=1)
        assert drift[0] < 1e-9 and 0.0 < drift[-1] < 3.0   # drifts, a little


def test_loop_has_a_revisit(small_set):
    fov = pytest.importorskip('vpr_ros.core.fov', reason='vpr_ros.core.fov is not written yet')
    _, poses = _index(small_set.indices[0])
    xy, yaw = poses[:, :2], fov.yaw_from_quaternion(poses[:, 3:])
    best = 0.0
    for i in range(len(poses)):
        j = np.arange(0, max(0, i - 30))                  # seen at least 30 s earlier
        if len(j):
            psi = fov.fov_overlap_many(np.repeat(xy[i:i + 1], len(j), 0),
                                       np.full(len(j), yaw[i]), xy[j], yaw[j])
            best = max(best, float(psi.max()))
    assert best > 0.5


def test_cli_and_cache(tmp_path):
    out = tmp_path / 'cli'
    rc = cli.main(['--out', str(out), '--size', '64x48', '--frames', '2', '--no-bag',
                   '--traverse', 'a:SW-S:winter', '--seed', '3'])
    assert rc == 0
    paths, poses = _index(str(out / 'folder' / 'a.json'))
    assert len(paths) == 2 and poses.shape == (2, 7)
    assert cli.main(['--out', str(out), '--no-bag']) == 2      # not empty: refused
    params = SimParams(width=64, height=48, max_frames=2, bag=False,
                       traverses=(TraverseConfig('a', ('SW', 'S'), 'noon'),))
    first = cached_dataset(params, cache_dir=str(tmp_path / 'cache'), log=lambda *_: None)
    again = cached_dataset(params, cache_dir=str(tmp_path / 'cache'), log=lambda *_: None)
    assert first.root == again.root and first.meta == again.meta
    assert os.path.basename(first.root) == params.key()
