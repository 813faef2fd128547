"""vpr_node (over real DDS, in its own process) runs the shipped model: model_path:=gcl_garden."""
import json
import os
import sys

import pytest

from vpr_ros.model import shipped
from vpr_ros.model.operating_point import model_operating_point

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import make_sequence  # noqa: E402
from ros_fixtures import Client, NodeProcess, run_to_exit, stream  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_node_runs_the_shipped_model_at_its_point_and_its_map_is_its_own(tmp_path) -> None:
    seq = make_sequence()
    map_dir = str(tmp_path / 'map')
    params = {'model_path': 'gcl_garden', 'pose_type': 'none', 'qos': 'reliable',
              'map_dir': map_dir, 'keyframe_max_interval_s': 0.5}
    node = NodeProcess(str(tmp_path / 'node'), 'vpr_shipped', params, namespace='/')
    client = None
    try:
        node.wait_ready()
        client = Client('client_shipped', node)
        from sensor_msgs.msg import Image
        client.wait_connected([(Image, '/camera/image_raw')])
        status = stream(client, seq, range(6), '/camera/image_raw', 'none')
        assert len(status) == 6 and sum(1 for s in status if s[2] > 0) >= 2
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()
    point, _ = model_operating_point('gcl_garden')
    # the shipped model's own calibrated point, not the built-in one
    assert (f'operating point: calibrated, {point.describe()}; in use: score_threshold '
            f'{point.score_threshold:.4f}, gv_min_inliers {point.min_inliers}') in node.log()
    current = open(os.path.join(map_dir, 'CURRENT')).read().strip()
    manifest = json.load(open(os.path.join(map_dir, current, 'manifest.json')))
    assert manifest['fingerprint'] == shipped.SHIPPED['gcl_garden'].sha256
    # The built-in model refuses that map (another model, another fingerprint).
    res = run_to_exit({**params, 'model_path': '', 'load_map': True}, str(tmp_path), 'vpr_c')
    assert res.returncode != 0
    assert "'map_dir'" in res.stderr and 'fingerprint' in res.stderr, res.stderr
