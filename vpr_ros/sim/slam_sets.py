"""
Simulated traverses for the SLAM back-end: many revisits and odometry that drifts.

`slam_dataset()` renders (once, then cached like every simulated set: vpr_ros/sim/dataset.py)
the garden of the demo driven along a route with several revisits ('revisits' by default: two
laps of the south-west block, the whole outer ring, and back into the block; see
trajectories.ROUTES). Its bag carries the camera, camera_info, ground truth on
`/ground_truth/pose` and `/odom` integrated from noisy increments (the WHEEL_ODOMETRY profile of
vpr_ros/sim/odometry.py at `odom_drift` 1.0), so a pose graph has drift to correct and the
ground truth to be scored against. The camera runs at 2.5 Hz (a frame every 0.4 m at 1 m/s):
the node's keyframes are 1 m apart anyway, and the demo plays the traverse in half the time.
"""
from vpr_ros.sim.dataset import cached_dataset, DatasetPaths, SimParams, TraverseConfig
from vpr_ros.sim.writers import GT_TOPIC, ODOM_TOPIC

SLAM_ROUTE = 'revisits'
SLAM_RATE_HZ = 2.5
SLAM_POSE_RATE_HZ = 20.0


def slam_params(route: str = SLAM_ROUTE, odom_drift: float = 1.0, seed: int = 0,
                rate_hz: float = SLAM_RATE_HZ, condition: str = 'noon') -> SimParams:
    """SimParams of one SLAM traverse named `slam_<route>` (bag only, no TB-Places folder)."""
    return SimParams(seed=seed, rate_hz=rate_hz, pose_rate_hz=SLAM_POSE_RATE_HZ,
                     traverses=(TraverseConfig(f'slam_{route}', route, condition, 1.0),),
                     folder=False, bag=True, odom_drift=odom_drift)


def slam_dataset(route: str = SLAM_ROUTE, cache_dir: str | None = None, log=print,
                 **kw) -> DatasetPaths:
    """Return the cached SLAM traverse of `route` (rendered on first use: ~30 s, 'revisits')."""
    return cached_dataset(slam_params(route, **kw), cache_dir=cache_dir, log=log)


def slam_bag(route: str = SLAM_ROUTE, **kw) -> tuple[str, str, str]:
    """Return (bag, odometry topic, ground-truth topic) of the SLAM traverse of `route`."""
    paths = slam_dataset(route, **kw)
    return paths.bags[0], ODOM_TOPIC, GT_TOPIC
