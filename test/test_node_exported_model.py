"""vpr_node (over real DDS, in its own process) runs a model file written by vpr-export."""
import json
import os
import sys

import pytest
from synthetic import train_tiny_run

from vpr_ros.model.model_file import file_fingerprint
from vpr_ros.training.ship.export import main as export_main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import make_sequence  # noqa: E402
from ros_fixtures import Client, NodeProcess, stream  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_node_runs_an_exported_model(tmp_path) -> None:
    root, run = train_tiny_run(str(tmp_path))
    model = str(tmp_path / 'model.pt')
    assert export_main([run, '--out', model, '--whiten-dim', '32', '--data-root', root,
                        '--whiten-map', 'train_map']) == 0
    seq = make_sequence()
    map_dir = str(tmp_path / 'map')
    # Root namespace, no remaps: the relative topics resolve to /camera/image_raw, /vpr/status.
    node = NodeProcess(str(tmp_path / 'node'), 'vpr_exported',
                       {'model_path': model, 'pose_type': 'none', 'qos': 'reliable',
                        'map_dir': map_dir, 'keyframe_max_interval_s': 0.5}, namespace='/')
    client = None
    try:
        node.wait_ready()
        client = Client('client_exported', node)
        from sensor_msgs.msg import Image
        assert node.topic('vpr/status') == '/vpr/status'
        client.wait_connected([(Image, '/camera/image_raw')])
        status = stream(client, seq, range(8), '/camera/image_raw', 'none')
        assert len(status) == 8 and sum(1 for s in status if s[2] > 0) >= 2
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()
    # The saved map is tied to the exported file: its fingerprint and whitened dimension.
    current = open(os.path.join(map_dir, 'CURRENT')).read().strip()
    manifest = json.load(open(os.path.join(map_dir, current, 'manifest.json')))
    assert manifest['fingerprint'] == file_fingerprint(model)
    assert manifest['dim'] == 32
