"""
Launch vpr_node with the package's parameters and the Fast DDS profile it needs.

`ros2 launch vpr_ros vpr.launch.py camera_topic:=/cam/image_raw pose_topic:=/odom` remaps the
node's default inputs (/camera/image_raw, its /compressed sibling, /odom) to the given topics;
`params_file:=...` replaces config/vpr.yaml; `loop_closure_topic:=lio_loop/loop_closure_detection`
feeds LIO-SAM. FASTDDS_DEFAULT_PROFILES_FILE is set to the shipped 16 MB shared-memory profile
unless it is already set, because the default segment is too small for camera images.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.launch_description import LaunchDescription
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'vpr_ros'
PROFILE_VAR = 'FASTDDS_DEFAULT_PROFILES_FILE'


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    params_file = LaunchConfiguration('params_file')
    camera_topic = LaunchConfiguration('camera_topic')
    pose_topic = LaunchConfiguration('pose_topic')
    loop_topic = LaunchConfiguration('loop_closure_topic')
    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'vpr.yaml'),
            description='vpr_node parameters (root /** -> ros__parameters)'),
        DeclareLaunchArgument(
            'camera_topic', default_value='/camera/image_raw',
            description='image topic (its /compressed sibling with image_transport compressed)'),
        DeclareLaunchArgument('pose_topic', default_value='/odom',
                              description='PoseStamped or Odometry topic (see pose_type)'),
        DeclareLaunchArgument(
            'loop_closure_topic', default_value='/vpr/loop_closure',
            description='where [t_query, t_match] goes (LIO-SAM: lio_loop/loop_closure_detection;'
                        ' needs loop_closure_output: true)'),
        # Keep a profile the user chose; otherwise use the shipped one.
        SetEnvironmentVariable(PROFILE_VAR, EnvironmentVariable(
            PROFILE_VAR, default_value=os.path.join(share, 'config', 'fastdds_shm16mb.xml'))),
        Node(
            package=PACKAGE, executable='vpr_node', name='vpr_node', output='screen',
            parameters=[params_file],
            remappings=[
                ('/camera/image_raw', camera_topic),
                ('/camera/image_raw/compressed', [camera_topic, '/compressed']),
                ('/odom', pose_topic),
                ('/vpr/loop_closure', loop_topic),
            ]),
    ])
