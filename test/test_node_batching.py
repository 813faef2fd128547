"""
vpr_node over real DDS falls behind a burst of frames and catches up in batches.

The whole image sequence is published at once (no pacing) to a node with max_batch 8: the
worker must embed waiting frames together (diagnostics `batches`, `batched_frames`), publish a
status row for every frame it did not drop, in stamp order, and count every other frame as
dropped. Then max_batch, gv_max_side and gv_first_only are changed live (an absurd
gv_max_side is refused naming it) and a second burst is processed one frame at a time.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import make_sequence  # noqa: E402
from ros_fixtures import Client, NodeProcess, run_to_exit  # noqa: E402

from vpr_ros.ros.diagnostics import BAD_INPUT_KEYS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
S = 10**9


def set_param(client: Client, node: NodeProcess, name: str, value):
    """Set one parameter through the node's set_parameters service; return the result."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return client.call(SetParameters, node.service('set_parameters'), req).results[0]


def burst(client: Client, node: NodeProcess, frames, stamps: list[int], before: dict) -> dict:
    """
    Publish every frame at once; wait until each received one is processed or dropped.

    The newest frame is never dropped (drop-oldest queue, keep-last DDS history), so its status
    row means every frame the node received has been processed or dropped; frames DDS itself
    let go of under the burst (keep-last history of the subscription) never reach the node.
    """
    from sensor_msgs.msg import Image
    pub = client.publisher(Image, node.topic('camera/image_raw'))
    for img, t in zip(frames, stamps):
        pub.publish(client.image_msg(img, t))
    client.wait_status(stamps[-1], timeout=180.0)
    n0 = {k: int(before.get(k, 0)) for k in ('frames_received', 'frames_processed',
                                              'frames_dropped')}
    keys = {round(t / S, 6) for t in stamps}

    def settled(d: dict) -> bool:
        got = {k: int(d[k]) - n0[k] for k in n0}
        with_status = len(keys & set(client.status))
        return (got['frames_processed'] + got['frames_dropped'] == got['frames_received']
                and got['frames_processed'] == with_status)
    diag = client.wait_diag(settled, timeout=60.0, what='every frame processed or dropped')
    assert int(diag['frames_received']) - n0['frames_received'] <= len(stamps), diag
    with client.lock:
        order = [k for k in client.status if k in keys]  # arrival order
    assert order == sorted(order), 'frames must be handled in stamp order'
    assert all(int(diag[k]) == 0 for k in BAD_INPUT_KEYS), diag
    return diag


def test_a_burst_is_processed_in_batches_and_every_frame_accounted(tmp_path) -> None:
    seq = make_sequence()
    # No stamp check: frames dropped from a burst leave stamp gaps the gate would refuse.
    node = NodeProcess(str(tmp_path), 'vpr_batch', {
        'pose_type': 'none', 'qos': 'reliable', 'map_dir': '', 'max_batch': 8,
        'stamp_window_s': 0.0})
    client = None
    try:
        node.wait_ready()
        client = Client('client_batch', node)
        from sensor_msgs.msg import Image
        client.wait_connected([(Image, node.topic('camera/image_raw'))])
        stamps = [int(t) for t in seq.stamps_ns]
        d1 = burst(client, node, seq.frames, stamps, {})
        batches, batched = int(d1['batches']), int(d1['batched_frames'])
        print(f"burst of {len(stamps)}: received {d1['frames_received']}, processed "
              f"{d1['frames_processed']}, dropped {d1['frames_dropped']}, {batches} batches "
              f'of {batched} frames')
        assert batches >= 1 and batched >= 2 * batches, d1
        assert batched <= int(d1['frames_processed']), d1

        assert set_param(client, node, 'max_batch', 1).successful
        bad = set_param(client, node, 'gv_max_side', 16)
        assert not bad.successful and "'gv_max_side'" in bad.reason, bad.reason
        assert set_param(client, node, 'gv_max_side', 640).successful
        assert set_param(client, node, 'gv_first_only', True).successful
        last = stamps[-1] + S
        d2 = burst(client, node, seq.frames, [last + k * S for k in range(len(stamps))], d1)
        assert (int(d2['batches']), int(d2['batched_frames'])) == (batches, batched), d2
        assert int(d2['frames_dropped']) > int(d1['frames_dropped']), d2  # queue of one
    finally:
        if client is not None:
            client.close()
        assert node.stop() == 0, node.log()


@pytest.mark.parametrize('params,words', [
    ({'max_batch': 0}, ["'max_batch'", 'integer in [1, 32]']),
    ({'max_batch': 1000}, ["'max_batch'", 'integer in [1, 32]']),
    ({'gv_max_side': 16}, ["'gv_max_side'", '0 (off) or integer in [32, 4096]']),
    ({'gv_first_only': 'yes'}, ["'gv_first_only'", 'wrong type']),
])
def test_bad_batch_and_verification_parameters_stop_start_up(tmp_path, params, words) -> None:
    res = run_to_exit({'map_dir': '', **params}, str(tmp_path), 'vpr_bad', timeout=60.0)
    assert res.returncode == 2, res.stderr
    for w in words:
        assert w in res.stderr, res.stderr
