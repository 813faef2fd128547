"""
Writers for simulated traverses: a TB-Places-style folder and a rosbag2 (mcap) per traverse.

The folder is what training reads (its index written by `vpr_ros.core.tbplaces`, the one
writer); the bag is what the ROS node and `vpr-extract-bag` consume, with the same ground-truth
poses, so both paths can be checked against each other. No rclpy: messages are serialized with
rosbags' typestore.
"""
import os

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.tbplaces import write_index
from vpr_ros.sim.odometry import DriftingOdometry, OdomNoise, WHEEL_ODOMETRY
from vpr_ros.sim.scene import Intrinsics

IMAGE_TOPIC = '/camera/image_raw'
INFO_TOPIC = '/camera/camera_info'
ODOM_TOPIC = '/odom'
GT_TOPIC = '/ground_truth/pose'
IMAGE_FRAME = 'camera_optical_frame'
POSE_FRAME = 'camera_link'        # what the poses are of (REP-103: x forward)
MAP_FRAME = 'map'
ODOM_FRAME = 'odom'


class FolderWriter:
    """
    `<root>/<name>.json` (im_prefix '<name>') and `<root>/<name>/000000.png`, ...

    Images go to disk as they come; the index is written last, so a half-written traverse has
    no index and no reader picks it up.
    """

    def __init__(self, root: str, name: str):
        self.root = root
        self.name = name
        self.image_dir = os.path.join(root, name)
        os.makedirs(self.image_dir, exist_ok=True)
        self.im_paths: list[str] = []
        self.poses: list[np.ndarray] = []

    def add(self, rgb: np.ndarray, pose7) -> None:
        fname = f'{len(self.im_paths):06d}.png'
        ok = cv2.imwrite(os.path.join(self.image_dir, fname), rgb[..., ::-1],
                         [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f'cannot write {fname} in {self.image_dir}')
        self.im_paths.append(fname)
        self.poses.append(np.asarray(pose7, dtype=np.float64))

    def close(self) -> str:
        """Write the index; returns its path."""
        poses = np.stack(self.poses) if self.poses else np.zeros((0, 7))
        return write_index(os.path.join(self.root, f'{self.name}.json'), self.name,
                           self.im_paths, poses)


class BagWriter:
    """
    rosbag2 (mcap) with image, camera info, odometry (optionally drifting) and ground truth.

    Poses are written at pose_rate_hz (a multiple of the camera rate, so every image stamp also
    has a pose at exactly that stamp). Ground truth is written as is; odometry is integrated
    from noisy increments (vpr_ros/sim/odometry.py, seeded): `odom_drift` is an OdomNoise, or a
    level scaling the documented WHEEL_ODOMETRY profile (0: odometry equals ground truth).
    """

    def __init__(self, path: str, intrinsics: Intrinsics, start_ns: int,
                 odom_drift: 'float | OdomNoise' = 0.0, seed: int = 0):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import get_typestore, Stores
        self.ts = get_typestore(Stores.ROS2_HUMBLE)
        self.T = self.ts.types
        self.intr = intrinsics
        self.start_ns = int(start_ns)
        noise = (odom_drift if isinstance(odom_drift, OdomNoise)
                 else WHEEL_ODOMETRY.scaled(float(odom_drift)))
        self.odometry = None if noise.exact else DriftingOdometry(noise, seed)
        self._last = None              # (stamp_ns, odometry pose7) of the previous pose message
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.c_img = self.writer.add_connection(IMAGE_TOPIC, 'sensor_msgs/msg/Image',
                                                typestore=self.ts)
        self.c_info = self.writer.add_connection(INFO_TOPIC, 'sensor_msgs/msg/CameraInfo',
                                                 typestore=self.ts)
        self.c_odom = self.writer.add_connection(ODOM_TOPIC, 'nav_msgs/msg/Odometry',
                                                 typestore=self.ts)
        self.c_gt = self.writer.add_connection(GT_TOPIC, 'geometry_msgs/msg/PoseStamped',
                                               typestore=self.ts)

    def _header(self, stamp_ns: int, frame: str):
        t = self.start_ns + int(stamp_ns)
        return self.T['std_msgs/msg/Header'](
            stamp=self.T['builtin_interfaces/msg/Time'](sec=t // 10**9, nanosec=t % 10**9),
            frame_id=frame)

    def _pose_msg(self, pose7):
        T = self.T
        p = np.asarray(pose7, dtype=np.float64)
        return T['geometry_msgs/msg/Pose'](
            position=T['geometry_msgs/msg/Point'](x=p[0], y=p[1], z=p[2]),
            orientation=T['geometry_msgs/msg/Quaternion'](x=p[3], y=p[4], z=p[5], w=p[6]))

    def add_image(self, stamp_ns: int, rgb: np.ndarray) -> None:
        T = self.T
        h, w = rgb.shape[:2]
        t = self.start_ns + int(stamp_ns)
        img = T['sensor_msgs/msg/Image'](
            header=self._header(stamp_ns, IMAGE_FRAME), height=h, width=w, encoding='rgb8',
            is_bigendian=0, step=w * 3, data=np.ascontiguousarray(rgb).reshape(-1))
        self.writer.write(self.c_img, t, self.ts.serialize_cdr(img, 'sensor_msgs/msg/Image'))
        i = self.intr
        roi = T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                     do_rectify=False)
        info = T['sensor_msgs/msg/CameraInfo'](
            header=self._header(stamp_ns, IMAGE_FRAME), height=i.height, width=i.width,
            distortion_model='plumb_bob', d=np.zeros(5), k=np.array(i.k()),
            r=np.eye(3).reshape(-1),
            p=np.array([i.fx, 0, i.cx, 0, 0, i.fy, i.cy, 0, 0, 0, 1, 0], dtype=np.float64),
            binning_x=0, binning_y=0, roi=roi)
        self.writer.write(self.c_info, t,
                          self.ts.serialize_cdr(info, 'sensor_msgs/msg/CameraInfo'))

    def add_pose(self, stamp_ns: int, pose7) -> None:
        """Write ground truth as is, odometry (drifting, if set) with a differenced twist."""
        T = self.T
        p = np.asarray(pose7, dtype=np.float64)
        t = self.start_ns + int(stamp_ns)
        gt = T['geometry_msgs/msg/PoseStamped'](header=self._header(stamp_ns, MAP_FRAME),
                                                pose=self._pose_msg(p))
        self.writer.write(self.c_gt, t,
                          self.ts.serialize_cdr(gt, 'geometry_msgs/msg/PoseStamped'))
        odom_pose = p if self.odometry is None else self.odometry.step(stamp_ns, p)
        lin = np.zeros(3)
        ang = np.zeros(3)
        if self._last is not None:
            dt = (stamp_ns - self._last[0]) * 1e-9
            prev = self._last[1]
            r_prev = Rotation.from_quat(prev[3:])
            lin = r_prev.inv().apply(odom_pose[:3] - prev[:3]) / dt
            ang = (r_prev.inv() * Rotation.from_quat(odom_pose[3:])).as_rotvec() / dt
        self._last = (int(stamp_ns), odom_pose)
        cov = np.zeros(36)
        v3 = T['geometry_msgs/msg/Vector3']
        odom = T['nav_msgs/msg/Odometry'](
            header=self._header(stamp_ns, ODOM_FRAME), child_frame_id=POSE_FRAME,
            pose=T['geometry_msgs/msg/PoseWithCovariance'](pose=self._pose_msg(odom_pose),
                                                           covariance=cov),
            twist=T['geometry_msgs/msg/TwistWithCovariance'](
                twist=T['geometry_msgs/msg/Twist'](linear=v3(x=lin[0], y=lin[1], z=lin[2]),
                                                   angular=v3(x=ang[0], y=ang[1], z=ang[2])),
                covariance=cov))
        self.writer.write(self.c_odom, t, self.ts.serialize_cdr(odom, 'nav_msgs/msg/Odometry'))

    def close(self) -> None:
        self.writer.close()


def read_bag_poses(path: str, topic: str = GT_TOPIC) -> tuple[np.ndarray, np.ndarray]:
    """(header stamps ns (N,), poses (N,7)) of a PoseStamped or Odometry topic in a bag."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import get_typestore, Stores
    ts = get_typestore(Stores.ROS2_HUMBLE)
    stamps, poses = [], []
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            pose = msg.pose.pose if conn.msgtype == 'nav_msgs/msg/Odometry' else msg.pose
            stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
            poses.append([pose.position.x, pose.position.y, pose.position.z,
                          pose.orientation.x, pose.orientation.y, pose.orientation.z,
                          pose.orientation.w])
    return np.asarray(stamps, dtype=np.int64), np.asarray(poses, dtype=np.float64).reshape(-1, 7)
