"""
`vpr_node`: the ROS 2 node, a thin layer that feeds camera frames to the loop detector.

Callbacks only enqueue: the image callback puts the message in a drop-oldest queue of
`max_batch` frames (default 1; no decode, no copy), so DDS delivery never waits for the CNN, and
a frame overtaken before the worker got to it is counted as dropped. Decoding happens in the
worker, so frames that are dropped anyway cost no decode (a 640x480 JPEG costs ~3 ms). The
worker thread takes the waiting frames (several embedded in one forward: ros/batching.py),
converts each message (msg_convert), looks the pose up at the image stamp (PoseBuffer), runs
`LoopDetector.process` frame by frame in stamp order, and publishes `vpr/matches` (layout in
README.md) and optionally `vpr/loop_closure` and `vpr/status`. Topic names are relative
(vpr_ros.ros.topics): a namespace moves them all, and inputs are chosen by remapping. Map
saves and resets hold the same lock as `process`, so a save never sees half a frame; autosave
runs in the worker between frames.

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
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from vpr_ros.core.errors import ImageError, MapError, ModelFileError, VPRError
from vpr_ros.core.msg_convert import pose_from_msg, stamp_ns
from vpr_ros.ros import loop_geometry as geo
from vpr_ros.ros import topics
from vpr_ros.ros.batching import PrefetchEncoder, run_batch
from vpr_ros.ros.diagnostics import Counters, diagnostics_message, FrameTimes
from vpr_ros.ros.frame_intake import Checked, FrameIntake, refusal_kind, Refused
from vpr_ros.ros.markers import MarkerTrail
from vpr_ros.ros.messages import (
    loop_closure_message,
    MATCH_COLUMNS,
    matches_message,
    reliable_qos,
    sensor_qos,
    status_message,
)
from vpr_ros.ros.param_updates import apply_config, ParamUpdates
from vpr_ros.ros.params import declare_all, ParamError, Params
from vpr_ros.ros.pose_wait import PoseInput
from vpr_ros.ros.shutdown import exit_now, spin_until_stopped, stop_log_to_stderr, StopSignals
from vpr_ros.ros.worker import DropOldestQueue

__all__ = ['main', 'MATCH_COLUMNS', 'StartupError', 'VprNode']
SAVE_DELAY_ENV = 'VPR_NODE_TEST_SAVE_DELAY_S'


class StartupError(RuntimeError):
    """The node cannot start (model, map); the message says what to change."""


class VprNode(Node):
    """Subscriptions, publishers, services and timers around one LoopDetector."""

    def __init__(self, **kwargs) -> None:
        super().__init__('vpr_node', **kwargs)
        self.params: Params = declare_all(self)  # ParamError: caught in main
        p = self.params
        self._log = self.get_logger()
        self._build_core(p)
        self._intake = FrameIntake(p.max_image_pixels, p.stamp_window_s)
        self._counters = Counters()
        self._times = FrameTimes()
        self._queue = DropOldestQueue(p.max_batch)
        self._paused = False
        self._poses = PoseInput(p.pose_max_gap_s)
        self._markers = MarkerTrail()
        self._poses.frame_id = self._markers.add_records(self._map.records())
        self._last_save_wall = time.monotonic()
        self._stop = threading.Event()
        self._saved_on_exit = False

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._make_publishers(p)
        self._make_inputs(p)
        self._make_services_and_timers(p)
        # Live parameter changes: validated before they are set, applied after (ros2/demos).
        self._param_updates = ParamUpdates(self, lambda: self.params, self._apply_params)
        self._worker = threading.Thread(target=self._work, name='vpr_worker', daemon=True)
        self._worker.start()
        self._log.info(
            f'vpr_node ready: {p.image_transport} images on {self.image_topic}, poses '
            f'{p.pose_type} on {self.pose_topic or "(none)"}, outputs on '
            f'{self._pub_matches.topic_name}, model {self._encoder.fingerprint} '
            f'(dim {self._encoder.dim}, device {self._encoder.device}), map '
            f'{p.map_path or "(memory only)"} with {len(self._map)} keyframes, session '
            f'{self._map.session}')

    # ------------------------------------------------------------------ set-up
    def _build_core(self, p: Params) -> None:
        """Build encoder, map and detector; each failure names the parameter to change."""
        from vpr_ros.core.detector import LoopDetector
        from vpr_ros.map.place_map import map_exists, PlaceMap
        from vpr_ros.model.encoder import build_encoder
        from vpr_ros.ros.params import check_map_dir, cost_warnings

        check_map_dir(p.map_path)  # first: an unwritable map_dir would lose the whole run
        for text in cost_warnings(p):
            self._log.warning(text)
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
                                      index=p.map_index, hnsw_m=p.hnsw_m,
                                      hnsw_ef_construction=p.hnsw_ef_construction,
                                      hnsw_ef_search=p.hnsw_ef_search)
        except MapError as err:
            raise StartupError(f"parameter 'map_dir' ({path}): {err}") from None
        try:
            self._point, why = geo.model_point(p)  # calibrated score (and inlier) threshold
            self._prefetch = PrefetchEncoder(self._encoder)  # batches of queued frames
            self._detector = LoopDetector(self._prefetch, self._map, geo.effective_config(
                p, self._point))
        except VPRError as err:
            raise ParamError(str(err)) from None
        self._log.info(geo.operating_point_note(p, self._point, why))
        self._core_lock = threading.Lock()

    def _make_publishers(self, p: Params) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray
        from visualization_msgs.msg import MarkerArray

        pub = self.create_publisher
        self._pub_matches = pub(Float64MultiArray, topics.MATCHES, reliable_qos(10))
        self._pub_loop = (pub(Float64MultiArray, topics.LOOP_CLOSURE, reliable_qos(10))
                          if p.loop_closure_output else None)
        self._pub_status = (pub(Float64MultiArray, topics.STATUS, reliable_qos(100))
                            if p.publish_status else None)
        self._pub_markers = pub(MarkerArray, topics.MARKERS, reliable_qos(1))
        self._pub_diag = pub(DiagnosticArray, topics.DIAGNOSTICS, reliable_qos(10))
        self._pub_relpose = pub(Float64MultiArray, geo.RELATIVE_POSE, reliable_qos(10))

    def _make_inputs(self, p: Params) -> None:
        if p.image_transport == 'compressed':
            from sensor_msgs.msg import CompressedImage as ImageType
        else:
            from sensor_msgs.msg import Image as ImageType
        sub = self.create_subscription(ImageType, topics.image_input(p.image_transport),
                                       self._on_image, sensor_qos(p.qos, max(5, p.max_batch)),
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
                                           self._on_pose, sensor_qos(p.qos, 50),
                                           callback_group=self._sensor_group)
            self.pose_topic = sub.topic_name
        self._camera_info = geo.CameraInfoInput(self, self._detector, sensor_qos(p.qos, 5),
                                                self._sensor_group, self._count)
        self._depth = geo.DepthInput(self, sensor_qos(p.qos, 5), self._sensor_group, self._count)

    def _make_services_and_timers(self, p: Params) -> None:
        from std_srvs.srv import SetBool, Trigger

        for name, srv_type, callback in (('~/save_map', Trigger, self._srv_save),
                                         ('~/reset_map', Trigger, self._srv_reset),
                                         ('~/pause', SetBool, self._srv_pause)):
            self.create_service(srv_type, name, callback, callback_group=self._service_group)
        self.create_timer(p.diagnostics_period_s, self._publish_diagnostics,
                          callback_group=self._timer_group)
        if p.markers_period_s > 0:
            self.create_timer(p.markers_period_s, self._publish_markers,
                              callback_group=self._timer_group)

    # --------------------------------------------------------------- callbacks
    def _count(self, key: str, message: str) -> None:
        """Count a bad input and warn, throttled per kind (rclpy throttles per call site)."""
        n, warn = self._counters.count(key)
        if warn:
            self._log.warning(f'{message} ({key}: {n} so far)')

    def _on_image(self, msg) -> None:
        """Enqueue only (never blocks): the worker decodes, so dropped frames cost nothing."""
        t0 = time.perf_counter()
        self._counters.received += 1
        self._times.input_rate.tick()
        if self._paused:
            self._counters.paused += 1
        else:
            self._queue.put((msg, time.monotonic()))
        self._times.callback.add(time.perf_counter() - t0)

    def _on_pose(self, msg) -> None:
        try:
            sp = pose_from_msg(msg)
        except VPRError as err:
            self._count('bad_pose', f'pose message refused: {err}')
            return
        for key, message in self._poses.add(sp):
            self._count(key, message)

    # ------------------------------------------------------------------ worker
    def _pose_for(self, stamp: int):
        """(Pose at the image stamp or None, why not); waits up to pose_wait_s for poses."""
        p = self.params
        if p.pose_type == 'none':
            return None, ''
        return self._poses.pose_at(stamp, p.pose_wait_s, p.pose_timeout_s)

    def _work(self) -> None:
        """Worker thread: the waiting frames (up to max_batch), autosave between; never raises."""
        while not self._stop.is_set():
            items = self._queue.get_many(self.params.max_batch, timeout=0.2)
            if items and not run_batch(items, lambda it: stamp_ns(it[0].header), self._check,
                                       self._finish, self._frame_error, self._prefetch):
                break
            self._maybe_autosave()

    def _frame_error(self, item, err: BaseException) -> bool:
        """Count a refused or failed frame, publish its status row; False: stop the worker."""
        if isinstance(err, Refused):
            self._count(err.key, str(err))
        elif self._stop.is_set() or not rclpy.ok(context=self.context):
            return False
        else:  # one frame must never end the worker
            self._count(refusal_kind(err), f'frame failed: {err!r}')
            self._log.debug(''.join(traceback.format_exception(err)))
        self._publish_status(stamp_ns(item[0].header), None, item[1])  # paced clients
        return True

    def _check(self, item) -> Checked:
        """Size, encoding, pose and stamp checks (Refused: counted by _frame_error)."""
        wait_s = self.params.pose_wait_s if self.params.pose_type != 'none' else 0.0
        return self._intake.check(item[0], self._pose_for, self._poses.newest, wait_s)

    def _finish(self, item, c: Checked) -> None:
        """One checked frame through the detector (its batch's descriptor if any); publish."""
        if c.note:
            self._log.warning(c.note)
        for key, text in self._intake.problems(c):
            self._count(key, text)
        frame = self._poses.frame_id if c.pose is not None else ''
        try:
            with self._core_lock:
                result = self._prefetch.charge(self._detector.process(
                    c.image, c.stamp, c.encoding, c.pose, frame,
                    depth=self._depth.take(c.stamp)), c.image)
        except ImageError as err:
            raise Refused('bad_image_data', f'image refused by the encoder: {err}') from None
        self._counters.processed += 1
        self._times.processed_rate.tick()
        self._times.core.add(result.t_total_s)
        self._publish_result(result, item[1])

    def _publish_result(self, result, t_recv: float) -> None:
        """vpr/matches (and vpr/loop_closure) when a candidate was accepted, status, markers."""
        out = matches_message(result)
        if out is not None:
            self._pub_matches.publish(out)
            self._counters.matches += 1
            if self._pub_loop is not None:
                self._pub_loop.publish(loop_closure_message(result))
        relpose = geo.relative_pose_message(result)
        if relpose is not None:
            self._pub_relpose.publish(relpose)
        self._times.latency.add(time.monotonic() - t_recv)
        self._publish_status(result.stamp_ns, result, t_recv)
        self._markers.add_result(result)

    def _publish_status(self, stamp: int, result, t_recv: float) -> None:
        if self._pub_status is not None:
            self._pub_status.publish(status_message(stamp, result, time.monotonic() - t_recv,
                                                    self._queue.dropped))

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

    def _apply_params(self, new: Params) -> None:
        """Use changed parameters from the next frame on (never in the middle of one)."""
        with self._core_lock:
            apply_config(self._detector, geo.effective_config(new, self._point))
            self.params = new
        self._queue.resize(new.max_batch)

    def _srv_save(self, request, response):
        response.success, response.message = self.save_map()
        return response

    def _srv_reset(self, request, response):
        with self._core_lock:
            n = len(self._map)
            self._map.reset()
            self._detector.reset()
        self._markers.clear()
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

    # ------------------------------------------------------------ diagnostics
    def counters(self) -> dict[str, int]:
        out = self._counters.as_dict()
        out['frames_dropped'] = self._queue.dropped
        out.update(batches=self._prefetch.batches, batched_frames=self._prefetch.batched_frames)
        out['map_size'] = len(self._map)
        out.update(geo.gate_counters(self._detector))
        return out

    def _publish_diagnostics(self) -> None:
        p = self.params
        pose_stale = p.pose_type != 'none' and self._poses.stale(p.pose_timeout_s)
        problems = []
        if pose_stale and self._counters.received:
            problems.append(f'no pose on {self.pose_topic} for > {p.pose_timeout_s} s')
        if self._paused:
            problems.append('paused')
        values = self._times.values()
        values.update({
            'device': str(self._encoder.device), 'model': self._encoder.fingerprint,
            'map_session': str(self._map.session), 'paused': str(self._paused).lower(),
            'pose_stale': str(pose_stale).lower(),
            'image_topic': self.image_topic, 'pose_topic': self.pose_topic,
        })
        values.update(self.counters())
        self._pub_diag.publish(diagnostics_message(
            str(self._encoder.device), problems, values, self.get_clock().now().to_msg()))

    def _publish_markers(self) -> None:
        if self._pub_markers.get_subscription_count() == 0:
            return
        out = self._markers.message(self._poses.frame_id or 'map',
                                    self.get_clock().now().to_msg())
        if out is not None:
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
    try:
        ros = rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as err:  # rcl refused the --ros-args (a remap, a params file): say which
        print(f'vpr_node: cannot start: ROS arguments refused: {err}', file=sys.stderr,
              flush=True)
        return 2
    with ros:
        try:
            node = VprNode()
        except (ParamError, StartupError) as err:
            print(f'vpr_node: cannot start: {err}', file=sys.stderr, flush=True)
            return 2
        stop.log = node.get_logger().info
        code = spin_until_stopped(node, stop)
        stop.log = stop_log_to_stderr
    # The map is on disk and rclpy shut down (ROS log flushed); skip the interpreter's
    # teardown (~3 s, torch), which launch's SIGTERM would otherwise cut short.
    print(f'vpr_node: exit {code}, {stop.elapsed_s():.2f} s after {stop.first_name}',
          flush=True)
    exit_now(code)
    return code


if __name__ == '__main__':
    sys.exit(main())
