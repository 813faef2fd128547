"""
`vpr_node`: the ROS 2 node, a thin layer that feeds camera frames to the loop detector.

Callbacks only enqueue: the image callback puts the message in a drop-oldest queue of size 1
(no decode, no copy), so DDS delivery never waits for the CNN, and a frame overtaken before
the worker got to it is counted as dropped. Decoding happens in the worker, so frames that are
dropped anyway cost no decode (a 640x480 JPEG costs ~3 ms). The worker thread converts the
message (msg_convert), looks the pose up at the image stamp (PoseBuffer), runs
`LoopDetector.process`, and publishes `vpr/matches` (layout in README.md) and optionally
`vpr/loop_closure` and `vpr/status`. Topic names are relative (vpr_ros.ros.topics): a namespace
moves them all, and inputs are chosen by remapping. Map saves and resets hold the same lock as
`process`, so a save never sees half a frame; autosave runs in the worker between frames.

Bad input (wrong encoding, truncated data, NaN poses, stamps going backwards, a pose topic that
stops) is logged with throttling and counted in /diagnostics; it never stops the node. A bad
parameter, an unreadable model file or a map of another model stop start-up with a message
naming the parameter, before anything is written. The first SIGINT/SIGTERM stops the worker and
saves the map once (atomically, by PlaceMap.save); further signals during the save are logged and
ignored (vpr_ros.ros.shutdown); exit 0, or 1 when that save failed.
"""
import os
import sys
import threading
import time
import traceback

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    qos_profile_sensor_data,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions

from vpr_ros.core.errors import ImageError, MapError, ModelFileError, VPRError
from vpr_ros.core.msg_convert import any_image_from_msg, pose_from_msg, stamp_ns, stamp_s
from vpr_ros.ros import topics
from vpr_ros.ros.params import BY_NAME, declare_all, ParamError, Params, validate
from vpr_ros.ros.shutdown import exit_now, stop_log_to_stderr, StopSignals
from vpr_ros.ros.worker import DropOldestQueue, RateMeter, RollingStats

MATCH_COLUMNS = 'query_stamp,match_stamp,score,match_id,query_id'
STATUS_COLUMNS = 'query_stamp,query_id,is_keyframe,candidates,core_ms,node_ms,dropped'
BAD_INPUT_KEYS = ('bad_encoding', 'bad_image_data', 'bad_pose', 'pose_out_of_order',
                  'pose_time_reset', 'image_stamp_backwards', 'no_pose', 'processing_errors')
THROTTLE_S = 5.0
MAX_LOOP_LINES = 5000
SAVE_DELAY_ENV = 'VPR_NODE_TEST_SAVE_DELAY_S'


class StartupError(RuntimeError):
    """The node cannot start (model, map); the message says what to change."""


def _reliable(depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def _sensor_qos(name: str, depth: int) -> QoSProfile:
    if name == 'reliable':
        return _reliable(depth)
    qos = QoSProfile(**{k: getattr(qos_profile_sensor_data, k)
                        for k in ('history', 'reliability', 'durability')}, depth=depth)
    return qos


def _multiarray(columns: str, rows: list[list[float]], outer: str):
    """Float64MultiArray with the [rows x len(columns)] layout of the /vpr/* contract."""
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    n_cols = len(columns.split(','))
    msg = Float64MultiArray()
    msg.layout.dim = [
        MultiArrayDimension(label=outer, size=len(rows), stride=len(rows) * n_cols),
        MultiArrayDimension(label=columns, size=n_cols, stride=n_cols),
    ]
    msg.layout.data_offset = 0
    msg.data = [float(v) for row in rows for v in row]
    return msg


def matches_message(result):
    """Build the /vpr/matches message of a FrameResult (None: no accepted candidate)."""
    if not result.candidates:
        return None
    t_q = stamp_s(result.stamp_ns)
    rows = [[t_q, stamp_s(c.match_stamp_ns), c.score, c.match_id, result.query_id]
            for c in result.candidates]
    return _multiarray(MATCH_COLUMNS, rows, 'candidates')


class VprNode(Node):
    """Subscriptions, publishers, services and timers around one LoopDetector."""

    def __init__(self, **kwargs) -> None:
        super().__init__('vpr_node', **kwargs)
        self.params: Params = declare_all(self)  # ParamError: caught in main
        p = self.params
        self._log = self.get_logger()
        self._build_core(p)
        self._counters = {k: 0 for k in BAD_INPUT_KEYS}
        self._counters_lock = threading.Lock()
        self._last_warn: dict[str, float] = {}
        self._queue = DropOldestQueue(1)
        self._paused = False
        self._paused_frames = 0
        self._received = 0
        self._processed = 0
        self._matches_published = 0
        self._last_image_stamp: int | None = None
        self._last_pose_wall: float | None = None
        self._pose_frame = ''
        self._pose_cond = threading.Condition()
        self._in_rate = RateMeter(5.0)
        self._proc_rate = RateMeter(5.0)
        self._lat_node = RollingStats(500)   # receive → published (queue wait + convert + core)
        self._lat_core = RollingStats(500)   # LoopDetector.process
        self._cb_time = RollingStats(500)    # image callback duration
        self._markers_lock = threading.Lock()
        self._kf_points: list[tuple[float, float, float]] = []
        self._loop_lines: list[tuple[tuple, tuple]] = []
        self._markers_dirty = True
        for rec in self._map.records():
            if rec.has_pose:
                self._kf_points.append(tuple(float(v) for v in rec.pose[:3]))
                self._pose_frame = self._pose_frame or rec.frame_id
        self._last_save_wall = time.monotonic()
        self._stop = threading.Event()
        self._saved_on_exit = False

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._make_interface(p)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._work, name='vpr_worker', daemon=True)
        self._worker.start()
        self._log.info(
            f'vpr_node ready: {p.image_transport} images on {self.image_topic}, poses '
            f'{p.pose_type} on {self.pose_topic or "(none)"}, outputs on '
            f'{self._pub_matches.topic_name}, '
            f'model {self._encoder.fingerprint} '
            f'(dim {self._encoder.dim}, device {self._encoder.device}), map '
            f'{p.map_path or "(memory only)"} with {len(self._map)} keyframes, session '
            f'{self._map.session}')

    # ------------------------------------------------------------------ set-up
    def _build_core(self, p: Params) -> None:
        """Build encoder, map and detector; each failure names the parameter to change."""
        from vpr_ros.core.detector import LoopDetector
        from vpr_ros.core.pose_buffer import PoseBuffer
        from vpr_ros.map.place_map import map_exists, PlaceMap
        from vpr_ros.model.encoder import build_encoder

        size = tuple(p.image_size)
        try:
            self._encoder = build_encoder(os.path.expanduser(p.model_path), p.device,
                                          image_size=None if size == (0, 0) else size)
        except ModelFileError as err:
            raise ParamError(f"parameter 'model_path': {err}") from None
        except VPRError as err:
            raise ParamError(f"parameter 'device' / 'model_path' / 'image_size': {err}") from None
        path = p.map_path
        if path and not p.load_map and map_exists(path):
            self._log.warning(f'load_map is false: the map in {path} is not loaded and will be '
                           'replaced by this new map at the first save')
        try:
            self._map = PlaceMap.open(path, self._encoder.fingerprint, self._encoder.dim,
                                      load_existing=p.load_map, create=bool(path),
                                      index=p.map_index)
        except MapError as err:
            raise StartupError(f"parameter 'map_dir' ({path}): {err}") from None
        try:
            self._detector = LoopDetector(self._encoder, self._map, p.detector_config())
        except VPRError as err:
            raise ParamError(str(err)) from None
        self._pose_buffer = PoseBuffer(max_gap_s=p.pose_max_gap_s)
        self._core_lock = threading.Lock()
        self._pose_lock = threading.Lock()

    def _make_interface(self, p: Params) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray
        from std_srvs.srv import SetBool, Trigger
        from visualization_msgs.msg import MarkerArray

        pub = self.create_publisher
        self._pub_matches = pub(Float64MultiArray, topics.MATCHES, _reliable(10))
        self._pub_loop = (pub(Float64MultiArray, topics.LOOP_CLOSURE, _reliable(10))
                          if p.loop_closure_output else None)
        self._pub_status = (pub(Float64MultiArray, topics.STATUS, _reliable(100))
                            if p.publish_status else None)
        self._pub_markers = pub(MarkerArray, topics.MARKERS, _reliable(1))
        self._pub_diag = pub(DiagnosticArray, topics.DIAGNOSTICS, _reliable(10))

        if p.image_transport == 'compressed':
            from sensor_msgs.msg import CompressedImage as ImageType
        else:
            from sensor_msgs.msg import Image as ImageType
        sub = self.create_subscription(ImageType, topics.image_input(p.image_transport),
                                       self._on_image, _sensor_qos(p.qos, 5),
                                       callback_group=self._sensor_group)
        # Logs and diagnostics name what was subscribed after namespace and remapping.
        self.image_topic: str = sub.topic_name
        self.pose_topic = ''
        if p.pose_type != 'none':
            if p.pose_type == 'Odometry':
                from nav_msgs.msg import Odometry as PoseType
            else:
                from geometry_msgs.msg import PoseStamped as PoseType
            sub = self.create_subscription(PoseType, topics.pose_input(p.pose_type),
                                           self._on_pose, _sensor_qos(p.qos, 50),
                                           callback_group=self._sensor_group)
            self.pose_topic = sub.topic_name

        self.create_service(Trigger, '~/save_map', self._srv_save,
                            callback_group=self._service_group)
        self.create_service(Trigger, '~/reset_map', self._srv_reset,
                            callback_group=self._service_group)
        self.create_service(SetBool, '~/pause', self._srv_pause,
                            callback_group=self._service_group)
        self.create_timer(p.diagnostics_period_s, self._publish_diagnostics,
                          callback_group=self._timer_group)
        if p.markers_period_s > 0:
            self.create_timer(p.markers_period_s, self._publish_markers,
                              callback_group=self._timer_group)

    # --------------------------------------------------------------- callbacks
    def _count(self, key: str, message: str) -> None:
        """Count a bad input and warn, throttled per kind (rclpy throttles per call site)."""
        now = time.monotonic()
        with self._counters_lock:
            self._counters[key] += 1
            n = self._counters[key]
            last = self._last_warn.get(key)
            if last is not None and now - last < THROTTLE_S:
                return
            self._last_warn[key] = now
        self._log.warning(f'{message} ({key}: {n} so far)')

    def _on_image(self, msg) -> None:
        """Enqueue only (never blocks): the worker decodes, so dropped frames cost nothing."""
        t0 = time.perf_counter()
        self._received += 1
        self._in_rate.tick()
        if self._paused:
            self._paused_frames += 1
        else:
            self._queue.put((msg, time.monotonic()))
        self._cb_time.add(time.perf_counter() - t0)

    def _on_pose(self, msg) -> None:
        try:
            sp = pose_from_msg(msg)
        except VPRError as err:
            self._count('bad_pose', f'pose message refused: {err}')
            return
        self._last_pose_wall = time.monotonic()
        buf = self._pose_buffer
        with self._pose_lock:
            newest = buf.latest()
            if newest is not None and sp.stamp_ns < newest.stamp_ns - int(1e9):
                # A bag restarted or sim time was reset: old history would refuse every pose.
                buf.clear()
                self._count('pose_time_reset', f'pose stamps jumped back to {sp.stamp_ns} '
                            f'from {newest.stamp_ns}: pose history cleared')
            before = dict(buf.counters)
            ok = buf.add(sp.stamp_ns, sp.position, sp.quaternion)
        if ok:
            self._pose_frame = sp.frame_id or self._pose_frame
            with self._pose_cond:
                self._pose_cond.notify_all()
            return
        after = buf.counters
        if after['nan_pose'] > before['nan_pose'] or after['zero_quaternion'] > before[
                'zero_quaternion']:
            self._count('bad_pose', f'pose at {sp.stamp_ns} refused: NaN/inf or zero quaternion')
        else:
            self._count('pose_out_of_order', f'pose at {sp.stamp_ns} refused: not newer than '
                        'the previous pose')

    # ------------------------------------------------------------------ worker
    def _pose_for(self, stamp: int):
        """Pose at the image stamp; waits up to pose_wait_s for poses to catch up with it."""
        p = self.params
        if p.pose_type == 'none':
            return None
        now = time.monotonic()
        stale = (self._last_pose_wall is None
                 or now - self._last_pose_wall > p.pose_timeout_s)
        if not stale and p.pose_wait_s > 0:
            deadline = now + p.pose_wait_s
            with self._pose_cond:
                while True:
                    with self._pose_lock:
                        newest = self._pose_buffer.latest()
                    if newest is not None and newest.stamp_ns >= stamp:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._pose_cond.wait(left)
        with self._pose_lock:
            pose = self._pose_buffer.pose_at(stamp)
        if pose is None:
            why = ('the pose topic is silent' if stale
                   else 'no pose around this stamp (outside the pose range or in a gap)')
            self._count('no_pose', f'image at {stamp_s(stamp):.3f} s has no pose: {why}; '
                        'keyframes by time and novelty')
        return pose

    def _work(self) -> None:
        """Worker thread: one frame at a time, autosave between frames; never raises."""
        while not self._stop.is_set():
            item = self._queue.get(timeout=0.2)
            if item is None:
                self._maybe_autosave()
                continue
            try:
                self._process(*item)
            except Exception as err:  # one frame must never end the worker
                if self._stop.is_set() or not rclpy.ok(context=self.context):
                    break
                self._count('processing_errors', f'frame failed: {err!r}')
                self._log.debug(traceback.format_exc())
            self._maybe_autosave()

    def _process(self, msg, t_recv: float) -> None:
        try:
            image, encoding = any_image_from_msg(msg)
        except ImageError as err:
            key = 'bad_encoding' if 'encoding' in str(err) else 'bad_image_data'
            self._count(key, f'image refused: {err}')
            self._publish_status(stamp_ns(msg.header), None, t_recv)
            return
        stamp = stamp_ns(msg.header)
        last = self._last_image_stamp
        if last is not None and stamp < last:
            self._count('image_stamp_backwards', f'image stamp {stamp_s(stamp):.3f} s is older '
                        f'than the previous {stamp_s(last):.3f} s')
        self._last_image_stamp = stamp
        pose = self._pose_for(stamp)
        frame = self._pose_frame if pose is not None else ''
        try:
            with self._core_lock:
                result = self._detector.process(image, stamp, encoding, pose, frame)
        except ImageError as err:
            self._count('bad_image_data', f'image refused by the encoder: {err}')
            self._publish_status(stamp, None, t_recv)
            return
        self._processed += 1
        self._proc_rate.tick()
        self._lat_core.add(result.t_total_s)
        out = matches_message(result)
        if out is not None:
            self._pub_matches.publish(out)
            self._matches_published += 1
            if self._pub_loop is not None:
                best = result.candidates[0]
                self._pub_loop.publish(_multiarray(
                    'query_stamp,match_stamp',
                    [[stamp_s(result.stamp_ns), stamp_s(best.match_stamp_ns)]], 'loop'))
        self._lat_node.add(time.monotonic() - t_recv)
        self._publish_status(stamp, result, t_recv)
        self._update_markers(result)

    def _publish_status(self, stamp: int, result, t_recv: float) -> None:
        if self._pub_status is None:
            return
        if result is None:  # refused frame: -1 candidates
            row = [stamp_s(stamp), -1, 0, -1, 0.0, 0.0, self._queue.dropped]
        else:
            row = [stamp_s(stamp), result.query_id, int(result.is_keyframe),
                   len(result.candidates), result.t_total_s * 1e3,
                   (time.monotonic() - t_recv) * 1e3, self._queue.dropped]
        self._pub_status.publish(_multiarray(STATUS_COLUMNS, [row], 'frames'))

    def _update_markers(self, result) -> None:
        if result.pose is None:
            return
        q = tuple(float(v) for v in result.pose.position)
        with self._markers_lock:
            if result.is_keyframe:
                self._kf_points.append(q)
                self._markers_dirty = True
            for c in result.candidates[:1]:
                if c.match_pose is not None:
                    self._loop_lines.append((q, tuple(float(v) for v in c.match_pose.position)))
                    del self._loop_lines[:-MAX_LOOP_LINES]
                    self._markers_dirty = True

    def _maybe_autosave(self) -> None:
        period = self.params.autosave_period_s
        if period <= 0 or not self.params.map_path:
            return
        if time.monotonic() - self._last_save_wall >= period:
            ok, text = self.save_map()
            (self._log.info if ok else self._log.error)(f'autosave: {text}')

    # --------------------------------------------------------------- map control
    def save_map(self) -> tuple[bool, str]:
        """Save under the core lock (never half a frame); (ok, message)."""
        path = self.params.map_path
        if not path:
            return False, 'map_dir is empty: the map is kept in memory only'
        t0 = time.perf_counter()
        try:
            with self._core_lock:
                n = len(self._map)
                gen = self._map.save(path)
        except (MapError, OSError) as err:
            return False, f'saving the map failed: {err}'
        self._last_save_wall = time.monotonic()
        return True, (f'saved {n} keyframes to {gen} in '
                      f'{(time.perf_counter() - t0) * 1e3:.0f} ms')

    def _srv_save(self, request, response):
        response.success, response.message = self.save_map()
        return response

    def _srv_reset(self, request, response):
        with self._core_lock:
            n = len(self._map)
            self._map.reset()
            self._detector.reset()
        with self._markers_lock:
            self._kf_points.clear()
            self._loop_lines.clear()
            self._markers_dirty = True
        response.success = True
        response.message = (f'map reset: {n} keyframes forgotten (in memory; the saved map is '
                            'replaced at the next save)')
        self._log.info(response.message)
        return response

    def _srv_pause(self, request, response):
        self._paused = bool(request.data)
        if self._paused:
            self._queue.clear()
        response.success = True
        response.message = 'paused' if self._paused else 'resumed'
        self._log.info(f'place recognition {response.message}')
        return response

    # ------------------------------------------------------------- parameters
    def _on_set_parameters(self, params):
        from rcl_interfaces.msg import SetParametersResult

        changes = {}
        for prm in params:
            spec = BY_NAME.get(prm.name)
            if spec is None:
                continue
            if spec.read_only:
                return SetParametersResult(successful=False,
                                           reason=f'{prm.name} is read-only (restart needed)')
            try:
                changes[prm.name] = validate(prm.name, prm.value)
            except ParamError as err:
                return SetParametersResult(successful=False, reason=str(err))
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = self.params.with_changes(changes)
            cfg = new.detector_config()
            cfg.validate()
        except (ParamError, VPRError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        with self._core_lock:
            c = self._detector.config
            c.top_k, c.score_threshold = cfg.top_k, cfg.score_threshold
            c.exclusion_s, c.exclusion_n = cfg.exclusion_s, cfg.exclusion_n
            pol = self._detector.policy
            pol.min_distance_m = cfg.kf_min_distance_m
            pol.min_angle_deg = cfg.kf_min_angle_deg
            pol.max_interval_s = cfg.kf_max_interval_s
            pol.novelty_threshold = cfg.kf_novelty_threshold
            self.params = new
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------ diagnostics
    def counters(self) -> dict[str, int]:
        with self._counters_lock:
            out = dict(self._counters)
        out['frames_received'] = self._received
        out['frames_processed'] = self._processed
        out['frames_dropped'] = self._queue.dropped
        out['frames_paused'] = self._paused_frames
        out['matches_published'] = self._matches_published
        out['map_size'] = len(self._map)
        return out

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        p = self.params
        c = self.counters()
        now = time.monotonic()
        pose_stale = (p.pose_type != 'none' and (
            self._last_pose_wall is None or now - self._last_pose_wall > p.pose_timeout_s))
        status = DiagnosticStatus(name='vpr_node: place recognition',
                                  hardware_id=str(self._encoder.device))
        problems = []
        if pose_stale and self._received:
            problems.append(f'no pose on {self.pose_topic} for > {p.pose_timeout_s} s')
        if self._paused:
            problems.append('paused')
        status.level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        status.message = '; '.join(problems) or 'running'

        def ms(stats: RollingStats, q: float) -> str:
            return f'{stats.percentile(q) * 1e3:.2f}'

        values = {
            'input_rate_hz': f'{self._in_rate.rate(now):.2f}',
            'processed_rate_hz': f'{self._proc_rate.rate(now):.2f}',
            'latency_p50_ms': ms(self._lat_node, 50), 'latency_p95_ms': ms(self._lat_node, 95),
            'core_p50_ms': ms(self._lat_core, 50), 'core_p95_ms': ms(self._lat_core, 95),
            'callback_p95_ms': ms(self._cb_time, 95),
            'device': str(self._encoder.device), 'model': self._encoder.fingerprint,
            'map_session': str(self._map.session), 'paused': str(self._paused).lower(),
            'pose_stale': str(pose_stale).lower(),
            'image_topic': self.image_topic, 'pose_topic': self.pose_topic,
        }
        values.update({k: str(v) for k, v in c.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(arr)

    def _publish_markers(self) -> None:
        if self._pub_markers.get_subscription_count() == 0:
            return
        from geometry_msgs.msg import Point
        from visualization_msgs.msg import Marker, MarkerArray

        with self._markers_lock:
            if not self._markers_dirty:
                return
            points = list(self._kf_points)
            lines = list(self._loop_lines)
            self._markers_dirty = False
        frame = self._pose_frame or 'map'
        stamp = self.get_clock().now().to_msg()
        out = MarkerArray()
        out.markers.append(Marker(action=Marker.DELETEALL))
        kf = Marker(ns='vpr_keyframes', id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
        kf.header.frame_id, kf.header.stamp = frame, stamp
        kf.pose.orientation.w = 1.0
        kf.scale.x = kf.scale.y = kf.scale.z = 0.2
        kf.color.g, kf.color.b, kf.color.a = 0.8, 0.2, 1.0
        kf.points = [Point(x=x, y=y, z=z) for x, y, z in points]
        lc = Marker(ns='vpr_loop_closures', id=1, type=Marker.LINE_LIST, action=Marker.ADD)
        lc.header.frame_id, lc.header.stamp = frame, stamp
        lc.pose.orientation.w = 1.0
        lc.scale.x = 0.05
        lc.color.r, lc.color.a = 1.0, 1.0
        lc.points = [Point(x=a[0], y=a[1], z=a[2]) for pair in lines for a in pair]
        out.markers += [m for m in (kf, lc) if m.points]
        self._pub_markers.publish(out)

    # --------------------------------------------------------------- shutdown
    def shutdown(self) -> bool:
        """Stop the worker (after its current frame), then save the map once; False: failed."""
        self._stop.set()
        self._queue.close()
        self._worker.join(timeout=30.0)
        path = self.params.map_path
        if self._saved_on_exit or not path:
            return True
        self._saved_on_exit = True
        print(f'vpr_node: shutdown: saving {len(self._map)} keyframes to {path}', flush=True)
        delay = float(os.environ.get(SAVE_DELAY_ENV) or 0.0)
        if delay > 0:  # test hook: a slow save, so that a test can signal during it
            time.sleep(delay)
        ok, text = self.save_map()
        print(f'vpr_node: shutdown: {text}', file=sys.stderr if not ok else sys.stdout,
              flush=True)
        return ok


def _spin(executor, stop: StopSignals, errors: list) -> None:
    """Executor thread; if it ends on its own (context gone, error) the node still saves."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception as err:  # the map must still be saved: ask for a stop, exit 1
        errors.append(err)
        stop.log(f'vpr_node: executor failed: {err!r}')
    finally:
        stop.request('executor end')


def run(node: VprNode, stop: StopSignals) -> int:
    """Spin until a stop is requested, then stop the worker and save; the exit code."""
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    errors: list = []
    spinner = threading.Thread(target=_spin, args=(executor, stop, errors), name='vpr_spin',
                               daemon=True)
    spinner.start()
    stop.wait()
    stop.phase = 'saving the map'
    saved = node.shutdown()
    stop.phase = 'closing'
    executor.shutdown(timeout_sec=1.0)
    spinner.join(timeout=2.0)
    node.destroy_node()
    return 0 if saved and not errors else 1


def main(args=None) -> int:
    """
    Run the console script `vpr_node`; the exit code says how it ended.

    2: a bad parameter, model or map at start-up; after a stop: 0 when the map was saved (or
    none is kept), 1 when the shutdown save failed (the map on disk is the last good save).
    """
    # OpenMP threads that busy-wait after each inference took the CPU from the processes beside
    # the node (measured: a client on the same 2 cores ran at half speed); torch is imported
    # later (encoder), so this still applies. A value the user set wins.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    stop = StopSignals()
    stop.install()  # before the model loads: a Ctrl-C then is an orderly stop too
    with rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO):
        try:
            node = VprNode()
        except (ParamError, StartupError) as err:
            print(f'vpr_node: cannot start: {err}', file=sys.stderr, flush=True)
            return 2
        stop.log = node.get_logger().info
        code = run(node, stop)
        stop.log = stop_log_to_stderr
    # The map is on disk and rclpy shut down (ROS log flushed); skip the interpreter's
    # teardown (~3 s, torch), which launch's SIGTERM would otherwise cut short.
    print(f'vpr_node: exit {code}, {stop.elapsed_s():.2f} s after {stop.first_name}',
          flush=True)
    exit_now(code)
    return code


if __name__ == '__main__':
    sys.exit(main())
