"""
The `vpr/markers` picture for RViz: keyframe positions and one line per accepted loop closure.

Kept apart from the node so the worker only records points (cheap, under a small lock) and the
timer builds a MarkerArray only when something changed and someone listens.
"""
import threading

MAX_LOOP_LINES = 5000


def _xyz(position) -> tuple[float, float, float]:
    return tuple(float(v) for v in position[:3])


class MarkerTrail:
    """Keyframe points and loop-closure lines, in the pose topic's frame."""

    def __init__(self, max_lines: int = MAX_LOOP_LINES) -> None:
        self._lock = threading.Lock()
        self._points: list[tuple[float, float, float]] = []
        self._lines: list[tuple[tuple, tuple]] = []
        self._max_lines = max_lines
        self._dirty = True

    def add_records(self, records) -> str:
        """Points of a loaded map's posed keyframes; return the first one's frame id ('')."""
        frame = ''
        with self._lock:
            for rec in records:
                if rec.has_pose:
                    self._points.append(_xyz(rec.pose))
                    frame = frame or rec.frame_id
            self._dirty = True
        return frame

    def add_result(self, result) -> None:
        """Record a processed frame: a point when it became a keyframe, a line when matched."""
        if result.pose is None:
            return
        q = _xyz(result.pose.position)
        with self._lock:
            if result.is_keyframe:
                self._points.append(q)
                self._dirty = True
            for c in [c for c in result.candidates if not c.prior][:1]:  # own frame only
                if c.match_pose is not None:
                    self._lines.append((q, _xyz(c.match_pose.position)))
                    del self._lines[:-self._max_lines]
                    self._dirty = True

    def clear(self) -> None:
        with self._lock:
            self._points.clear()
            self._lines.clear()
            self._dirty = True

    def message(self, frame_id: str, stamp):
        """MarkerArray of the current picture, or None when nothing changed since the last."""
        from geometry_msgs.msg import Point
        from visualization_msgs.msg import Marker, MarkerArray

        with self._lock:
            if not self._dirty:
                return None
            points = list(self._points)
            lines = list(self._lines)
            self._dirty = False
        out = MarkerArray()
        out.markers.append(Marker(action=Marker.DELETEALL))
        kf = Marker(ns='vpr_keyframes', id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
        kf.scale.x = kf.scale.y = kf.scale.z = 0.2
        kf.color.g, kf.color.b, kf.color.a = 0.8, 0.2, 1.0
        kf.points = [Point(x=x, y=y, z=z) for x, y, z in points]
        lc = Marker(ns='vpr_loop_closures', id=1, type=Marker.LINE_LIST, action=Marker.ADD)
        lc.scale.x = 0.05
        lc.color.r, lc.color.a = 1.0, 1.0
        lc.points = [Point(x=a[0], y=a[1], z=a[2]) for pair in lines for a in pair]
        for m in (kf, lc):
            m.header.frame_id, m.header.stamp = frame_id, stamp
            m.pose.orientation.w = 1.0
        out.markers += [m for m in (kf, lc) if m.points]
        return out
