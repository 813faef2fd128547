"""
The node's topic names, all relative, so a namespace (`__ns:=/robot1`) moves every one of them.

In the root namespace they resolve to `/vpr/matches`, `/camera/image_raw`, `/odom`...; under
`__ns:=/robot1` to `/robot1/vpr/matches`, `/robot1/camera/image_raw`, `/robot1/odom`. Inputs are
chosen by remapping only (`-r camera/image_raw:=/front/image_raw`), the ROS convention: there
are no topic-name parameters that a remap and a params file could disagree on. Only
`/diagnostics` is absolute (the aggregator listens there). `input_remaps` turns "this image
topic, that pose topic" into the remap rules, for the tools and tests that start a node.
"""

MATCHES = 'vpr/matches'
LOOP_CLOSURE = 'vpr/loop_closure'
RELATIVE_POSE = 'vpr/relative_pose'
STATUS = 'vpr/status'
MARKERS = 'vpr/markers'
DIAGNOSTICS = '/diagnostics'
IMAGE = 'camera/image_raw'
CAMERA_INFO = 'camera/camera_info'
DEPTH = 'camera/depth/image_raw'
COMPRESSED_SUFFIX = '/compressed'
POSE = {'Odometry': 'odom', 'PoseStamped': 'pose'}


def image_input(transport: str) -> str:
    """Image topic the node subscribes to: `<image>/compressed` for compressed transport."""
    return IMAGE + COMPRESSED_SUFFIX if transport == 'compressed' else IMAGE


def pose_input(pose_type: str) -> str | None:
    """Pose topic of a pose type ('odom' for Odometry, 'pose' for PoseStamped; None: none)."""
    return POSE.get(pose_type)


def input_remaps(image_topic: str = '', transport: str = 'raw', pose_topic: str = '',
                 pose_type: str = 'Odometry') -> list[str]:
    """
    Remap rules (`FROM:=TO`) that feed the node from `image_topic` and `pose_topic`.

    `image_topic` is the camera's base topic (image_transport style); with compressed
    transport the node reads `<image_topic>/compressed` (a topic already ending in
    `/compressed` is taken as it is). Empty names keep the node's defaults.
    """
    rules = []
    if image_topic:
        target = image_topic.rstrip('/') or image_topic
        if transport == 'compressed' and not target.endswith(COMPRESSED_SUFFIX):
            target += COMPRESSED_SUFFIX
        rules.append(f'{image_input(transport)}:={target}')
    name = pose_input(pose_type)
    if pose_topic and name is not None:
        rules.append(f'{name}:={pose_topic}')
    return rules
