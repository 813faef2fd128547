"""
A map save that fails while the node runs (issue 20, defect 3): the node goes on, and says so.

The node runs with a file-size limit (RLIMIT_FSIZE: a write past it fails with EFBIG, as a full
disk fails with ENOSPC) that the map outgrows after a few autosaves. It used to raise 'Logger
severity cannot be changed between calls' in the autosave, the worker thread died, frames were
no longer processed and /diagnostics still said OK. Now: every frame keeps its status row, the
failure is an ERROR in /diagnostics (with the reason) and a log line, the shutdown save fails
with exit 1, and the last good map on disk loads.
"""
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import Client, NodeProcess  # noqa: E402

pytestmark = [pytest.mark.ros]
S = 10**9
LIMIT = 1 << 20  # the map files outgrow 1 MiB after a few dozen keyframes with features


def test_a_failing_autosave_keeps_the_worker_and_reports_an_error(seq, tmp_path) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import Image

    from vpr_ros.map.place_map import PlaceMap
    from vpr_ros.model.encoder import build_encoder

    map_dir = tmp_path / 'map'
    params = {'pose_type': 'none', 'qos': 'reliable', 'map_dir': str(map_dir),
              'autosave_period_s': 1.0, 'keyframe_novelty_threshold': 1.0}
    node = NodeProcess(str(tmp_path), 'vpr_full', params, file_size_limit=LIMIT)
    client = None
    t = 1_700_000_000 * S
    try:
        node.wait_ready()
        client = Client('client_full', node)
        topic = node.topic('camera/image_raw')
        client.wait_connected([(Image, topic)])
        pub = client.publisher(Image, topic)
        sent, failed_at = 0, None
        while sent < 600 and failed_at is None:  # until a save has failed
            pub.publish(client.image_msg(seq.frames[sent % len(seq.frames)], t))
            assert client.wait_status(t)[1] >= 0, 'every frame is a keyframe here'
            t, sent = t + S // 10, sent + 1
            if sent % 10 == 0 and client.latest_diag().get('map_save_error'):
                failed_at = sent
        assert failed_at is not None, f'no save failed after {sent} keyframes: {node.log()}'
        assert 'autosave: saved' in node.log(), 'a save must have succeeded before'
        assert 'autosave: saving the map failed' in node.log(), node.log()
        before = int(client.latest_diag()['frames_processed'])
        for _ in range(20):  # the worker is alive: frames are still processed
            pub.publish(client.image_msg(seq.frames[sent % len(seq.frames)], t))
            client.wait_status(t)
            t, sent = t + S // 10, sent + 1
        diag = client.wait_diag(lambda d: int(d['frames_processed']) >= before + 20, 30,
                                'frames processed after the failed save')
        assert diag['map_save_error'].startswith('saving the map failed'), diag
        with client.lock:
            status = client.diags[-1].status[0]
        assert status.level == DiagnosticStatus.ERROR and 'saving the map failed' in \
            status.message, status
    finally:
        if client is not None:
            client.close()
    assert node.stop(signal.SIGINT) == 1, node.log()  # the shutdown save fails too
    enc = build_encoder('', device='cpu')
    m = PlaceMap.load(str(map_dir), enc.fingerprint, enc.dim)  # the last good save
    assert 0 < len(m) < sent
    m.close()
