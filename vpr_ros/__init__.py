"""Visual place recognition for ROS 2: a ROS-free core plus a thin rclpy node."""

__version__ = '0.1.0'
