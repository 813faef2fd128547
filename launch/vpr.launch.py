"""
Launch vpr_node with the package's parameters and the Fast DDS profile it needs.

Topics are chosen by remapping only (the node has no topic-name parameters): `camera_topic:=`,
`pose_topic:=` and `loop_closure_topic:=` become remaps of the node's relative names
(`camera/image_raw` or its `/compressed` sibling, `odom` or `pose` by pose_type,
`vpr/loop_closure`). `namespace:=/robot1` moves every relative name, inputs and outputs, under
/robot1 (two robots, two nodes, one graph); `/diagnostics` stays global. `params_file:=...`
replaces config/vpr.yaml. FASTDDS_DEFAULT_PROFILES_FILE is set to the shipped 16 MB
shared-memory profile unless it is already set, because the default segment is too small for
camera images.

Any node parameter may also be given as a launch argument (`top_k:=5`, `map_dir:=/data/map`):
it is checked against the node's parameter table before anything starts (`top_k:=5.5` stops
the launch naming the parameter and what it accepts; launch used to drop undeclared arguments
without a word) and overrides the params file. Arguments that are neither declared here nor a
parameter are named in a warning (an including launch file may have its own). The default
map_dir holds the node's namespace and name, so `namespace:=/robot1` and `namespace:=/robot2`
at their defaults keep separate maps. `lifecycle:=true` starts the managed node
(`vpr_lifecycle_node`, as a launch_ros LifecycleNode) unconfigured: `ros2 lifecycle set
<node> configure`, then `activate` (or a lifecycle manager) start it.

Stopping: Ctrl-C (SIGINT) lets the node save its map and exit; launch escalates to SIGTERM only
after `sigterm_timeout`: 60 s by default instead of launch's 5 s. Measured on this machine: a map
of 20k keyframes (1280-d descriptors, 25 KB of verification features each, 605 MB) saves in
5 s, so 60 s leaves room for about 200k keyframes.
Never stop `ros2 launch` itself with SIGTERM: launch exits at once and orphans the node
(systemd: KillSignal=SIGINT; Docker: STOPSIGNAL SIGINT; see README).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import evaluate_condition_expression
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
import launch.logging
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = 'vpr_ros'
PROFILE_VAR = 'FASTDDS_DEFAULT_PROFILES_FILE'
# The node's relative input/output names (vpr_ros/ros/topics.py) that the arguments remap.
IMAGE = 'camera/image_raw'
POSE_NAMES = ('odom', 'pose')  # Odometry, PoseStamped: only the one pose_type uses is subscribed
LOOP_CLOSURE = 'vpr/loop_closure'
SIGTERM_TIMEOUT_S = '60'


def remaps(camera_topic: str, pose_topic: str, loop_topic: str) -> list[tuple[str, str]]:
    """Remap rules for the given topics; an empty argument keeps the node's default name."""
    rules = []
    if camera_topic:
        base = camera_topic.rstrip('/')
        rules += [(IMAGE, base), (IMAGE + '/compressed', base + '/compressed')]
    if pose_topic:
        rules += [(name, pose_topic) for name in POSE_NAMES]
    if loop_topic:
        rules.append((LOOP_CLOSURE, loop_topic))
    return rules


def parameter_arguments(context: LaunchContext, declared) -> dict:
    """
    Node parameters given as launch arguments, validated by the node's table; warn on others.

    Raises RuntimeError naming the parameter for a value the node would refuse, so launch stops
    before starting anything.
    """
    from vpr_ros.ros.params import launch_overrides, ParamError

    try:
        values, unknown = launch_overrides(context.launch_configurations, declared)
    except ParamError as err:
        raise RuntimeError(f'vpr.launch.py: launch argument refused: {err}') from None
    if unknown:
        launch.logging.get_logger('vpr.launch.py').warning(
            f'launch arguments that are neither arguments of vpr.launch.py nor vpr_node '
            f'parameters, ignored: {", ".join(unknown)}')
    return values


def _node(context: LaunchContext, declared: tuple[str, ...]) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    managed = evaluate_condition_expression(context, [LaunchConfiguration('lifecycle')])
    action, executable = (LifecycleNode, 'vpr_lifecycle_node') if managed else (Node, 'vpr_node')
    return [action(
        package=PACKAGE, executable=executable, name=arg('node_name'),
        namespace=arg('namespace'), output='screen',
        parameters=[arg('params_file'), parameter_arguments(context, declared)],
        remappings=remaps(arg('camera_topic'), arg('pose_topic'), arg('loop_closure_topic')),
        sigterm_timeout=arg('sigterm_timeout'))]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'vpr.yaml'),
            description='vpr_node parameters (root /** -> ros__parameters)'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='namespace of the node and of all its relative topics (e.g. /robot1)'),
        DeclareLaunchArgument('node_name', default_value='vpr_node',
                              description='node name (services are ~/save_map...)'),
        DeclareLaunchArgument(
            'camera_topic', default_value='',
            description='image topic (remaps camera/image_raw and its /compressed sibling); '
                        'relative names are inside namespace; empty: camera/image_raw'),
        DeclareLaunchArgument(
            'pose_topic', default_value='',
            description='Odometry or PoseStamped topic, per the pose_type parameter (remaps odom '
                        'and pose); empty: odom (Odometry) or pose (PoseStamped)'),
        DeclareLaunchArgument(
            'loop_closure_topic', default_value='',
            description='where [t_query, t_match] goes (LIO-SAM: /lio_loop/loop_closure_'
                        'detection; needs loop_closure_output: true); empty: vpr/loop_closure'),
        DeclareLaunchArgument(
            'sigterm_timeout', default_value=SIGTERM_TIMEOUT_S,
            description='seconds launch waits after SIGINT (the node saves its map) before '
                        'SIGTERM'),
        DeclareLaunchArgument(
            'lifecycle', default_value='false', choices=['true', 'false'],
            description='true: the managed node vpr_lifecycle_node, started unconfigured '
                        '(ros2 lifecycle set <node> configure, then activate)'),
    ]
    declared = tuple(a.name for a in arguments)
    return LaunchDescription([
        *arguments,
        # Keep a profile the user chose; otherwise use the shipped one.
        SetEnvironmentVariable(PROFILE_VAR, EnvironmentVariable(
            PROFILE_VAR, default_value=os.path.join(share, 'config', 'fastdds_shm16mb.xml'))),
        OpaqueFunction(function=_node, args=[declared]),
    ])
