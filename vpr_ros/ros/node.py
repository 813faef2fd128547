"""
`vpr_node`: the ROS 2 node, a thin layer that feeds camera frames to the loop detector.

A frame's path, all of it in this file's "frame path" section:

1. `_on_image` (DDS callback) only puts the message into the intake's drop-oldest queue of
   `max_batch` frames: DDS delivery never waits for the CNN, and a frame overtaken before the
   worker got to it is counted as dropped. No decode here: dropped frames cost nothing.
2. The worker thread (`_work`) takes the waiting frames, checked in stamp order by the intake
   (`FrameIntake.take`: decode, size, pose at the image stamp, stamp gate, depth;
   vpr_ros/ros/frame_intake.py). A refused frame is counted and gets its status row.
3. Several accepted frames are embedded in one forward (`Encoder.embed_frames`); each frame
   then goes through `LoopDetector.process` alone, in stamp order, with its descriptor
   (vpr_ros/core/detector.py: search, evidence, the decision of vpr_ros/core/decision.py, map
   add).
4. `_publish` sends what the detector decided: `vpr/matches` (layout in README.md),
   `vpr/relative_pose`, optionally `vpr/loop_closure` and `vpr/status`, built by
   vpr_ros/ros/messages.py.

Topic names are relative (vpr_ros/ros/topics.py): a namespace moves them all, and inputs are
chosen by remapping. Map saves and resets hold the same lock as `process`, so a save never sees
half a frame; autosave runs in the worker between frames, and a failed save is an error in
/diagnostics and the log, never the end of the worker.

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

from vpr_ros.core.cpu_threads import limit_blas_threads, prefer_passive_omp
from vpr_ros.core.errors import ImageError, MapError, ModelFileError, VPRError
from vpr_ros.core.msg_convert import pose_from_msg, stamp_ns
from vpr_ros.ros import messages, topics
from vpr_ros.ros.camera_info import CameraInfoInput
from vpr_ros.ros.detector_config import apply_config, overridden_names, RunningConfig
from vpr_ros.ros.diagnostics import Counters, diagnostics_message, FrameTimes, gate_counters
from vpr_ros.ros.frame_intake import Checked, FrameIntake, refusal_kind, Refused
from vpr_ros.ros.map_control import MapControl, SAVE_DELAY_ENV
from vpr_ros.ros.markers import MarkerTrail
from vpr_ros.ros.messages import MATCH_COLUMNS, reliable_qos, sensor_qos
from vpr_ros.ros.param_updates import ParamUpdates
from vpr_ros.ros.params import declare_all, ParamError, Params
from vpr_ros.ros.shutdown import exit_now, spin_until_stopped, stop_log_to_stderr, StopSignals
from vpr_ros.ros.startup_checks import start_warnings

__all__ = ['main', 'MATCH_COLUMNS', 'SAVE_DELAY_ENV', 'StartupError', 'VprNode']

class StartupError(RuntimeError):
    """The node cannot start (model, map); the message says what to change."""


class VprNode(MapControl, Node):
    """Subscriptions, publishers, services and timers around one LoopDetector."""

    image_topic = pose_topic = ''  # the subscribed inputs, once active

    def __init__(self, *, managed: bool = False, **kwargs) -> None:
        """Declare the parameters; the plain node then configures and activates at once."""
        super().__init__('vpr_node', **kwargs)
        params = declare_all(self)  # ParamError: caught in main
        self._log = self.get_logger()
        for text in start_warnings(overridden_names(self), self.get_parameter('map_dir').value,
                                   params.map_path):
            self._log.warning(text)
        self._running = RunningConfig.start(params, overridden_names(self))
        # Live parameter changes: validated before they are set, applied after (ros2/demos).
        self._param_updates = ParamUpdates(self, lambda: self._running, self._apply_running)
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        if not managed:  # a managed node waits for configure and activate (lifecycle_node.py)
            self._configure()
            self._activate()

    def _configure(self) -> None:
        """Model, map and detector, the intake, outputs, services and timers."""
        p = self.params
        self._build_core(p)
        self._intake = FrameIntake(p.max_image_pixels, p.stamp_window_s, p.max_batch,
                                   p.pose_max_gap_s, use_poses=p.pose_type != 'none',
                                   clock=self._clock_s, pose_live_s=p.pose_timeout_s)
        self._counters = Counters()
        self._times = FrameTimes()
        self._batches = self._batched_frames = 0
        self._paused = False
        self._markers = MarkerTrail()
        map_frame = self._markers.add_records(self._map.records())
        if self._intake.poses is not None:
            self._intake.poses.frame_id = map_frame
        self._last_save_wall = time.monotonic()
        self._save_error = ''
        self._saved_on_exit, self._exit_saved = False, True
        self._make_publishers(p)
        self._make_services_and_timers(p)

    def _activate(self) -> None:
        """Subscribe to the inputs and start the worker."""
        p = self.params
        self._make_inputs(p)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name='vpr_worker', daemon=True)
        self._worker.start()
        self._log.info(
            f'vpr_node ready: {p.image_transport} images on {self.image_topic}, poses '
            f'{p.pose_type} on {self.pose_topic or "(none)"}, outputs on '
            f'{self._pub_matches.topic_name}, model {self._encoder.fingerprint} '
            f'(dim {self._encoder.dim}, device {self._encoder.device}), map '
            f'{p.map_path or "(memory only)"} with {len(self._map)} keyframes, session '
            f'{self._map.session}')

    def _clock_s(self) -> float:
        """Return the node's ROS clock in seconds: wall time, or /clock under use_sim_time."""
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def params(self) -> Params:
        return self._running.params

    # ------------------------------------------------------------------ set-up
    def _build_core(self, p: Params) -> None:
        """Build encoder, map and detector; each failure names the parameter to change."""
        from vpr_ros.core.detector import LoopDetector
        from vpr_ros.map.place_map import PlaceMap
        from vpr_ros.model.encoder import build_encoder
        from vpr_ros.ros.startup_checks import check_map_dir, cost_warnings

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
        try:
            # load_map (default): continue the saved map, a new session; false: start afresh,
            # the old map moved aside inside map_dir (kept, never deleted)
            self._map = PlaceMap.open(path, self._encoder.fingerprint, self._encoder.dim,
                                      load_existing=p.load_map, aside=not p.load_map,
                                      create=bool(path), index=p.map_index, hnsw_m=p.hnsw_m,
                                      hnsw_ef_construction=p.hnsw_ef_construction,
                                      hnsw_ef_search=p.hnsw_ef_search)
        except MapError as err:
            raise StartupError(f"parameter 'map_dir' ({path}): {err}") from None
        priors = None
        if p.prior_map_dirs:
            from vpr_ros.map.prior_maps import PriorMaps
            dirs = [d for d in p.prior_map_dirs.split(os.pathsep) if d]
            try:
                priors = PriorMaps(dirs, self._encoder.fingerprint, self._encoder.dim)
            except MapError as err:
                raise StartupError(f"parameter 'prior_map_dirs': {err}") from None
            self._log.info('prior maps (read-only): ' + ', '.join(
                f'{k + 1}: {n} ({len(m)} keyframes)'
                for k, (n, m) in enumerate(zip(priors.names, priors.maps))))
        try:
            self._detector = LoopDetector(self._encoder, self._map,
                                          self._running.detector_config(), priors)
        except VPRError as err:
            raise ParamError(str(err)) from None
        if getattr(self._map, 'moved_aside', None):
            self._log.warning(f'load_map is false: the saved map was moved aside to '
                              f'{self._map.moved_aside}; this is a new map')
        if p.blas_threads > 0:  # after the map: FAISS brings an OpenBLAS of its own
            limit_blas_threads(p.blas_threads)
        self._log.info(self._running.note())
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
        self._pub_relpose = pub(Float64MultiArray, topics.RELATIVE_POSE, reliable_qos(10))

    def _make_inputs(self, p: Params) -> None:
        from sensor_msgs.msg import Image

        if p.image_transport == 'compressed':
            from sensor_msgs.msg import CompressedImage as ImageType
        else:
            ImageType = Image
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
        self._camera_info = CameraInfoInput(self, self._detector, sensor_qos(p.qos, 5),
                                            self._sensor_group, self._count)
        self.create_subscription(Image, topics.DEPTH, self._intake.depth.put,
                                 sensor_qos(p.qos, 5), callback_group=self._sensor_group)

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

    # -------------------------------------------------------------- frame path
    def _on_image(self, msg) -> None:
        """Enqueue only (never blocks): the worker decodes, so dropped frames cost nothing."""
        t0 = time.perf_counter()
        self._counters.received += 1
        self._times.input_rate.tick()
        if self._paused:
            self._counters.paused += 1
        else:
            self._intake.queue.put((msg, time.monotonic()))
        self._times.callback.add(time.perf_counter() - t0)

    def _on_pose(self, msg) -> None:
        try:
            sp = pose_from_msg(msg)
        except VPRError as err:
            self._count('bad_pose', f'pose message refused: {err}')
            return
        for key, message in self._intake.poses.add(sp):
            self._count(key, message)

    def _work(self) -> None:
        """Worker thread: the waiting frames (up to max_batch), autosave between; never raises."""
        while not self._stop.is_set():
            p = self.params
            try:
                batch = self._intake.take(p.max_batch, 0.2, p.pose_wait_s, p.pose_timeout_s)
                if batch and not self._process(batch):
                    break
                self._maybe_autosave()
            except Exception as err:  # a bug must not end the worker: say it, go on
                self._log.error(f'worker: {err!r}\n{traceback.format_exc()}')

    def _process(self, batch: list) -> bool:
        """Frames of one batch, in stamp order, through the detector; False: stop the worker."""
        checked = [(i, c) for i, (_, c) in enumerate(batch) if isinstance(c, Checked)]
        descs = {}
        if len(checked) > 1:  # several frames waited: one forward for all of them
            embedded = self._encoder.embed_frames([(c.image, c.encoding) for _, c in checked])
            descs = {i: d for (i, _), d in zip(checked, embedded) if d[0] is not None}
            self._batches += 1
            self._batched_frames += len(descs)
        for i, (item, c) in enumerate(batch):
            try:
                if not isinstance(c, Checked):
                    raise c  # refused by the intake: reported in its place
                self._publish(self._detect(c, *descs.get(i, (None, 0.0))), item[1])
            except Exception as err:  # one frame must never end the batch
                if not self._frame_failed(item, err):
                    return False
        return True

    def _detect(self, c: Checked, descriptor, embed_s: float):
        """One checked frame through the detector, under the core lock."""
        if c.note:
            self._log.warning(c.note)
        for key, text in self._intake.problems(c):
            self._count(key, text)
        try:
            with self._core_lock:
                result = self._detector.process(
                    c.image, c.stamp, c.encoding, c.pose,
                    self._intake.poses.frame_id if c.pose is not None else '', depth=c.depth,
                    descriptor=descriptor, embed_s=embed_s)
        except ImageError as err:
            raise Refused('bad_image_data', f'image refused by the encoder: {err}') from None
        self._counters.processed += 1
        self._times.processed_rate.tick()
        self._times.core.add(result.t_total_s)
        return result

    def _publish(self, result, t_recv: float) -> None:
        """vpr/matches (and vpr/loop_closure, vpr/relative_pose) when accepted; status, markers."""
        out = messages.matches_message(result)
        if out is not None:
            self._pub_matches.publish(out)
            self._counters.matches += 1
            loop = messages.loop_closure_message(result) if self._pub_loop else None
            if loop is not None:
                self._pub_loop.publish(loop)
        relpose = messages.relative_pose_message(result)
        if relpose is not None:
            self._pub_relpose.publish(relpose)
        self._times.latency.add(time.monotonic() - t_recv)
        self._publish_status(result.stamp_ns, result, t_recv)
        self._markers.add_result(result)

    def _frame_failed(self, item, err: BaseException) -> bool:
        """Count a refused or failed frame, publish its status row; False: stop the worker."""
        if not isinstance(err, Refused) and (self._stop.is_set()
                                             or not rclpy.ok(context=self.context)):
            return False
        self._count(refusal_kind(err), str(err) if isinstance(err, Refused)
                    else f'frame failed: {err!r}')
        if not isinstance(err, Refused):
            self._log.debug(''.join(traceback.format_exception(err)))
        self._publish_status(stamp_ns(item[0].header), None, item[1])  # paced clients
        return True

    def _publish_status(self, stamp: int, result, t_recv: float) -> None:
        if self._pub_status is not None:
            self._pub_status.publish(messages.status_message(
                stamp, result, time.monotonic() - t_recv, self._intake.queue.dropped))

    def _count(self, key: str, message: str) -> None:
        """Count a bad input and warn, throttled per kind (rclpy throttles per call site)."""
        n, warn = self._counters.count(key)
        if warn:
            self._log.warning(f'{message} ({key}: {n} so far)')

    def _apply_running(self, new: RunningConfig) -> None:
        """Use changed parameters from the next frame on (never in the middle of one)."""
        with self._core_lock:
            apply_config(self._detector, new.detector_config())
            self._running = new
        self._intake.queue.resize(new.params.max_batch)

    # ------------------------------------------------------------ diagnostics
    def counters(self) -> dict[str, int]:
        out = self._counters.as_dict()
        out['frames_dropped'] = self._intake.queue.dropped
        out.update(batches=self._batches, batched_frames=self._batched_frames)
        out['map_size'] = len(self._map)
        out.update(gate_counters(self._detector))
        return out

    def _publish_diagnostics(self) -> None:
        p = self.params
        poses = self._intake.poses
        pose_stale = poses is not None and poses.stale(p.pose_timeout_s)
        problems = []
        if pose_stale and self._counters.received:
            problems.append(f'no pose on {self.pose_topic} for > {p.pose_timeout_s} s')
        if self._paused:
            problems.append('paused')
        values = self._times.values()
        config = self._detector.config
        values.update({
            'device': str(self._encoder.device), 'model': self._encoder.fingerprint,
            'map_session': str(self._map.session), 'paused': str(self._paused).lower(),
            'pose_stale': str(pose_stale).lower(),
            'image_topic': self.image_topic, 'pose_topic': self.pose_topic,
            'score_threshold': f'{config.score_threshold:.6g}',
            'gv_min_inliers': str(config.gv_min_inliers),
            'map_save_error': self._save_error,
        })
        values.update(self.counters())
        errors = [self._save_error] if self._save_error else []
        self._pub_diag.publish(diagnostics_message(
            str(self._encoder.device), problems, values, self.get_clock().now().to_msg(),
            errors))

    def _publish_markers(self) -> None:
        if self._pub_markers.get_subscription_count() == 0:
            return
        poses = self._intake.poses
        frame = (poses.frame_id if poses is not None else '') or 'map'
        out = self._markers.message(frame, self.get_clock().now().to_msg())
        if out is not None:
            self._pub_markers.publish(out)

def main(args=None, node_type: type | None = None) -> int:
    """
    Run the console script `vpr_node` (or a managed `node_type`); the exit code says how it ended.

    2: a bad parameter, model or map at start-up; after a stop: 0 when the map was saved (or
    none is kept), 1 when the shutdown save failed (the map on disk is the last good save).
    """
    # torch is imported later (encoder), so this still applies (vpr_ros/core/cpu_threads.py)
    prefer_passive_omp()
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
            node = (node_type or VprNode)()
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
