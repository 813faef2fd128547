"""
The node's pose input: poses from the pose topic, looked up at image stamps.

Poses often arrive a little after the image they belong to (odometry runs behind the camera),
so the worker may wait up to `pose_wait_s` for a pose at or past the image stamp before it
interpolates; a silent pose topic is not waited for. One condition guards the PoseBuffer: the
pose callback adds and notifies, the worker waits on it.
"""
import threading
import time

from vpr_ros.core.pose_buffer import Pose, PoseBuffer

RESET_BACK_NS = 10**9  # poses jumping back more than this: a restarted bag or sim time reset


class PoseInput:
    """PoseBuffer of the pose topic, with the wait for late poses and the staleness test."""

    def __init__(self, max_gap_s: float) -> None:
        self.buffer = PoseBuffer(max_gap_s=max_gap_s)
        self._cond = threading.Condition()
        self.last_wall: float | None = None  # time.monotonic() of the last pose received
        self.frame_id = ''

    def add(self, sp) -> list[tuple[str, str]]:
        """Store a StampedPose; return (counter key, message) for each problem found."""
        problems = []
        self.last_wall = time.monotonic()
        buf = self.buffer
        with self._cond:
            newest = buf.latest()
            if newest is not None and sp.stamp_ns < newest.stamp_ns - RESET_BACK_NS:
                # A bag restarted or sim time was reset: old history would refuse every pose.
                buf.clear()
                problems.append(('pose_time_reset', f'pose stamps jumped back to {sp.stamp_ns} '
                                 f'from {newest.stamp_ns}: pose history cleared'))
            before = dict(buf.counters)
            ok = buf.add(sp.stamp_ns, sp.position, sp.quaternion)
            if ok:
                self.frame_id = sp.frame_id or self.frame_id
                self._cond.notify_all()
                return problems
            after = buf.counters
        if (after['nan_pose'] > before['nan_pose']
                or after['zero_quaternion'] > before['zero_quaternion']):
            problems.append(('bad_pose', f'pose at {sp.stamp_ns} refused: NaN/inf or zero '
                             'quaternion'))
        else:
            problems.append(('pose_out_of_order', f'pose at {sp.stamp_ns} refused: not newer '
                             'than the previous pose'))
        return problems

    def newest(self) -> tuple[int | None, float | None]:
        """Stamp of the newest pose and when the last pose arrived: the stamp gate's reference."""
        with self._cond:
            latest = self.buffer.latest()
        return (None if latest is None else latest.stamp_ns), self.last_wall

    def stale(self, timeout_s: float, now: float | None = None) -> bool:
        """No pose ever, or none for `timeout_s`: the pose topic counts as stopped."""
        now = time.monotonic() if now is None else now
        return self.last_wall is None or now - self.last_wall > timeout_s

    def pose_at(self, stamp_ns: int, wait_s: float, timeout_s: float
                ) -> tuple[Pose | None, str]:
        """Pose at the image stamp, waiting up to `wait_s` for poses to catch up; (None, why)."""
        stale = self.stale(timeout_s)
        with self._cond:
            if not stale and wait_s > 0:
                deadline = time.monotonic() + wait_s
                while True:
                    newest = self.buffer.latest()
                    left = deadline - time.monotonic()
                    if (newest is not None and newest.stamp_ns >= stamp_ns) or left <= 0:
                        break
                    self._cond.wait(left)
            pose = self.buffer.pose_at(stamp_ns)
        if pose is not None:
            return pose, ''
        return None, ('the pose topic is silent' if stale
                      else 'no pose around this stamp (outside the pose range or in a gap)')

    def clear(self) -> None:
        with self._cond:
            self.buffer.clear()
