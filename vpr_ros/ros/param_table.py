"""
The node's parameters as one table: name, default, range or choices, description, read-only.

Each `ParamSpec` row feeds the ROS `ParameterDescriptor`s, the start-up validation,
`config/vpr.yaml` and the README's parameter reference (all in params.py, which re-exports this
table), so a parameter cannot be declared in one place and forgotten in another. Kept apart from
params.py only for the module size limit; the table is the one place a parameter is described.
"""
from dataclasses import dataclass
from typing import Any

from vpr_ros.core.detector import DetectorConfig
from vpr_ros.map.index_kinds import INDEX_KINDS, kind_names


@dataclass(frozen=True)
class ParamSpec:
    """
    One parameter: `lo`/`hi` bound numbers (inclusive), `choices` bound strings.

    `min_on` > 0: the value 0 means off, and values in (0, min_on) are refused, for periods
    whose tiny values cost far more than anyone means (a busy core, a save after every frame)
    and sizes too small to work with (gv_max_side: ORB finds nothing in a 16-pixel frame).
    `field`: the DetectorConfig field this parameter sets (see `_core`), None for node-only ones.
    `calibrated`: a model's operating point replaces it unless the user sets it
    (vpr_ros/ros/detector_config.py), so config/vpr.yaml leaves it commented out.
    """

    name: str
    default: Any
    description: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = True
    min_on: float | None = None
    field: str | None = None
    calibrated: bool = False

    @property
    def type_name(self) -> str:
        if isinstance(self.default, bool):
            return 'bool'
        if isinstance(self.default, int):
            return 'integer'
        if isinstance(self.default, float):
            return 'double'
        if isinstance(self.default, str):
            return 'string'
        if isinstance(self.default, (list, tuple)):
            return 'integer array'
        raise TypeError(f'no type for {self.name}')

    def accepted(self) -> str:
        """Say what the parameter accepts, in words, for error messages and the docs."""
        if self.choices is not None:
            return 'one of ' + ', '.join(repr(c) for c in self.choices)
        if self.lo is not None and self.hi is not None:
            if self.type_name == 'integer array':
                return f'two integers, each in [{int(self.lo)}, {int(self.hi)}]'
            fmt = int if self.type_name == 'integer' else float
            if self.min_on is not None:
                return f'0 (off) or {self.type_name} in [{fmt(self.min_on)}, {fmt(self.hi)}]'
            return f'{self.type_name} in [{fmt(self.lo)}, {fmt(self.hi)}]'
        return f'any {self.type_name}'


_C = DetectorConfig()


def _index_kinds_text() -> str:
    """Describe map_index from the index-kind table (a new kind is one entry there)."""
    kinds = [f'{k.name} ({k.description})' for k in INDEX_KINDS.values()]
    return 'FAISS index: ' + ', '.join(kinds[:-1]) + ' or ' + kinds[-1] + '.'

_T = ('raw', 'compressed')


def _core(name: str, field: str, description: str, lo: float | None = None,
          hi: float | None = None, read_only: bool = True,
          min_on: float | None = None, calibrated: bool = False) -> ParamSpec:
    """
    Declare a parameter that sets DetectorConfig.`field`, with the core's default.

    `detector_config()` is derived from these entries, so a parameter cannot reach the core
    under another name or with another default by mistake.
    """
    return ParamSpec(name, getattr(_C, field), description, lo, hi, read_only=read_only,
                     min_on=min_on, field=field, calibrated=calibrated)


SPECS: tuple[ParamSpec, ...] = (
    # ---- inputs (topics are chosen by remapping, not by parameters: vpr_ros/ros/topics.py)
    ParamSpec('image_transport', 'raw', 'raw: sensor_msgs/Image on camera/image_raw; '
              'compressed: sensor_msgs/CompressedImage (JPEG or PNG) on '
              'camera/image_raw/compressed (the image_transport convention).', choices=_T),
    ParamSpec('qos', 'sensor_data',
              'QoS of the image and pose subscriptions: sensor_data (best effort, keeps the '
              'latest; matches any publisher) or reliable (matches reliable publishers only).',
              choices=('sensor_data', 'reliable')),
    ParamSpec('pose_type', 'Odometry', 'Pose input, interpolated at image stamps: '
              'nav_msgs/Odometry on odom, geometry_msgs/PoseStamped on pose; none: no pose '
              'subscription (keyframes by time and novelty only).',
              choices=('none', 'PoseStamped', 'Odometry')),
    ParamSpec('pose_max_gap_s', 0.5, 'Poses further apart than this are not interpolated '
              'between (the image gets no pose).', 0.0, 60.0),
    ParamSpec('pose_wait_s', 0.2, 'How long the worker waits for a pose newer than an image '
              'before processing it (poses often arrive a little after the image; a frame '
              'without its pose is processed as by a camera alone and left out of the '
              "sequence evidence's distance history). At 0.05 s, 7 of 658 frames of make "
              "demo's SLAM route lost their pose on a loaded 2-core machine; a pose on time "
              'ends the wait at once.', 0.0, 1.0, read_only=False),
    ParamSpec('pose_timeout_s', 2.0, 'A pose topic silent this long counts as stopped '
              '(warning, diagnostics WARN).', 0.1, 3600.0, read_only=False),
    # A 629-byte JPEG can declare 16000x16000 (768 MB decoded): the declared size is checked
    # against this before decoding (msg_convert), and raw Image sizes too.
    ParamSpec('max_image_pixels', 4096 * 4096, 'Frames declaring more pixels than this '
              '(width x height, read before decoding), or more decoded bytes than 4 per pixel '
              'of it (16-bit colour counts 2 bytes a channel), are refused as bad_image_data; '
              'the default fits any real camera (4096x4096 pixels, 64 MiB decoded: any 8-bit '
              'image that size, 16-bit colour up to 8 Mpixels).', 64 * 64, 1 << 30),
    ParamSpec('stamp_window_s', 10.0, 'An image stamp further than this from both the '
              "previous frame (plus the time since, on the node's ROS clock: /clock under "
              'use_sim_time) and the newest pose is refused '
              '(image_stamp_implausible), as is a repeated stamp (image_stamp_duplicate); 3 '
              'consecutive frames agreeing on a new timeline are followed (0: no check).',
              0.0, 1e7),
    # ---- model
    ParamSpec('model_path', '', "Model file written by vpr-export, or 'gcl_garden' (the "
              'shipped GCL-trained model, hash-checked, with its own calibrated operating '
              'point); empty: the built-in ImageNet MobileNetV2 + GeM.'),
    ParamSpec('device', 'auto', 'Inference device; auto picks cuda when available.',
              choices=('auto', 'cpu', 'cuda')),
    ParamSpec('image_size', [0, 0], "Network input [height, width]; [0, 0]: the model's own "
              '(224x224 for the default). Another size changes descriptors, so a map made '
              'with one size cannot be continued with another (the encoder time and memory '
              'grow with the pixels: 1024x1024 is 21x the default).', 0, 1024),
    ParamSpec('max_batch', 1, 'Frames the worker takes at once when it fell behind: up to '
              'this many wait in the queue (the oldest beyond are dropped and counted), are '
              'embedded in one forward and then processed one by one in stamp order (the '
              'image subscription keeps as many, from start-up). 1: only the newest frame '
              'waits (no gain from batches on the CPU, measured by '
              'bench/bench_node.py --max-batch; on a GPU a batch costs little more than one '
              'frame: bench/bench_gpu.py).', 1, 32, read_only=False),
    ParamSpec('blas_threads', 1, "Threads of numpy's BLAS (OpenBLAS) in the node. 1: its idle "
              "workers no longer spin on the cores the network's forward needs (measured by "
              'bench/bench_core.py: a revisiting 640x480 frame 26-29 ms instead of 30-39 ms on '
              '2 cores); 0: the library default (a thread per core), which searches a large '
              'flat map faster (100k keyframes: 20 instead of 35 ms). OPENBLAS_NUM_THREADS, '
              'when set, wins.', 0, 256),
    # ---- keyframes
    _core('keyframe_min_distance_m', 'kf_min_distance_m',
          'A frame is a keyframe once the robot moved this far (0: off).', 0.0, 1000.0,
          read_only=False),
    _core('keyframe_min_angle_deg', 'kf_min_angle_deg',
          '... or turned this much (0: off).', 0.0, 180.0, read_only=False),
    _core('keyframe_max_interval_s', 'kf_max_interval_s',
          '... or this much time passed (0: off).', 0.0, 86400.0, read_only=False),
    _core('keyframe_interval_without_pose_s', 'kf_interval_no_pose_s',
          'Without a pose: a keyframe at least this often (0: off), so a history aligned '
          'by time meets the map every second (not while the camera stands still: '
          'keyframe_still_similarity).', 0.0, 86400.0, read_only=False),
    _core('keyframe_still_similarity', 'kf_still_similarity',
          'Without a pose: a frame at least this similar to the last keyframe shows the same '
          'view (the camera stands still) and waits for keyframe_max_interval_s instead of '
          'keyframe_interval_without_pose_s (0: off).', 0.0, 1.0, read_only=False),
    _core('keyframe_novelty_threshold', 'kf_novelty_threshold',
          'Without a pose: a keyframe when the similarity to the last keyframe drops '
          'below this (0: off).', 0.0, 1.0, read_only=False),
    # ---- detection
    _core('exclusion_window_s', 'exclusion_s',
          'Keyframes of this session within this many seconds of the query are never '
          'candidates (they are the recent past, not a loop).', 0.0, 1e7, read_only=False),
    _core('exclusion_keyframes', 'exclusion_n',
          'The last N keyframes added are never candidates either (0: off).', 0, 1000000,
          read_only=False),
    _core('top_k', 'top_k', 'Candidates searched per query (rows of /vpr/matches).',
          1, 100, read_only=False),
    _core('score_threshold', 'score_threshold',
          "Minimum cosine similarity of an accepted candidate. Unset: the model's calibrated "
          'operating point (set it, even to this default, to use your own).', -1.0, 1.0,
          read_only=False, calibrated=True),
    _core('temporal_consistency', 'temporal_consistency',
          'n > 1: accept a candidate only when the previous n-1 queries matched near it '
          '(0 or 1: off).', 0, 100),
    # On by default: on the demo garden it took the precision of published loop closures from
    # 0.33 to 0.96 at the same recall, for ~7 ms more per frame (README, measured results).
    _core('geometric_verification', 'geometric_verification',
          'Check candidates with ORB features + RANSAC (stores features per keyframe).'),
    _core('gv_min_inliers', 'gv_min_inliers',
          'RANSAC inliers needed to accept a candidate when verification is on. Unset: the '
          "model's calibrated operating point.", 4, 10000, read_only=False, calibrated=True),
    _core('gv_min_inlier_ratio', 'gv_min_inlier_ratio',
          'Share of the ratio-test matches that must be RANSAC inliers (look-alikes measured '
          '0.77-0.92 with 15+ inliers, true revisits >= 0.96: vpr_ros/core/verification.py).',
          0.0, 1.0),
    _core('gv_min_spread', 'gv_min_spread',
          'Share of a 4x4 grid over the query image that the inliers must cover (inliers '
          'bunched on one poster are a look-alike).', 0.0, 1.0),
    # 320: ORB 500 on the full 640x480 frame cost as much as the CNN, at 320x240 a seventh
    # (bench/bench_verify.py, issue 13); the ratio and spread defaults were measured there.
    _core('gv_max_side', 'gv_max_side',
          'Local features are found on the frame shrunk to this longer side (0: the full '
          'frame; frames under 320 px are enlarged, to at most this side). Larger costs more '
          'per verified frame, and inlier counts change: the calibrated gv_min_inliers was '
          'measured at 320. Keyframes keep the features they were stored with.', 0, 4096,
          read_only=False, min_on=32),
    _core('gv_clahe_clip', 'gv_clahe_clip',
          'Equalise local contrast (CLAHE, this clip limit; 0: off) before local features are '
          'found. Dusk, fog and snow frames then verify far more often (measured in '
          'vpr_ros/core/verification.py), but at the built-in calibrated point it lowers '
          'recall at precision 1.0 (README, operating point): turn it on with a point '
          'calibrated with it. Keyframes keep the features they were stored with.', 0.0, 40.0),
    _core('gv_first_only', 'gv_first_only',
          'Verify candidates best first and stop at the first accepted: /vpr/matches then '
          'carries that one candidate (what /vpr/loop_closure uses anyway); false: every '
          'candidate above the threshold is verified and listed.', read_only=False),
    _core('degenerate_gate', 'degenerate_gate',
          'Frames with nothing in them (lens cap, blank wall, over/under-exposed, heavy blur) '
          'are neither matched nor stored, and counted (vpr_ros/core/degenerate.py).'),
    # ---- sequence evidence and distinctiveness (vpr_ros/core/sequence.py)
    _core('sequence_evidence', 'sequence_evidence',
          'When no candidate passes score_threshold and gv_min_inliers, accept the keyframe '
          'the last metres of frames support best (sequence, session-centred descriptors) if '
          'its margin over the best other place reaches confidence_threshold and '
          'verification does not contradict it (works where verification cannot see: night, '
          'blur).', read_only=False),
    _core('confidence_threshold', 'confidence_threshold',
          'Margin of sequence support over the best other place that the sequence rule '
          'needs, the history aligned by distance driven (poses or odometry). Unset: the '
          "model's calibrated operating point.", -1.0, 2.0,
          read_only=False, calibrated=True),
    _core('confidence_threshold_time', 'confidence_threshold_time',
          '... the history aligned by time (no poses: weaker evidence, a higher margin). '
          "Unset: the model's calibrated operating point.", -1.0, 2.0,
          read_only=False, calibrated=True),
    _core('sequence_length_m', 'sequence_length_m',
          'History of frames the sequence compares, in metres driven (with poses).',
          0.5, 1000.0),
    _core('sequence_length_s', 'sequence_length_s',
          '... and in seconds (without poses).', 0.5, 3600.0),
    _core('sequence_candidates', 'sequence_candidates',
          'Keyframes searched per frame for sequence support (raw and centred query each).',
          1, 1000),
    _core('gv_veto_matches', 'gv_veto_matches',
          'Verification vetoes a sequence-supported candidate when it saw at least this many '
          'ratio-test matches and they do not fit one geometry.', 1, 100000, read_only=False),
    # ---- map
    ParamSpec('map_dir', '~/.ros/vpr_ros/{namespace}/{name}/map', 'Map directory; the node '
              'fills {namespace} and {name} with its own (the default: one directory per node, '
              'so two robots at their defaults never share a map; /robot1/vpr_node: '
              '~/.ros/vpr_ros/robot1/vpr_node/map). ~ and ~user expanded, a ~user that does '
              'not exist refused; a relative path is taken from the working directory at '
              'start-up, logged as absolute; empty: keep the map in memory only, never save.'),
    ParamSpec('load_map', True, 'Continue the map in map_dir (a new session); false: start a '
              'new map, moving the old one aside to map_dir/aside/<UTC time>_s<last session>/ '
              '(kept: the node never deletes a map).'),
    ParamSpec('map_index', 'flat', _index_kinds_text(), choices=kind_names()),
    ParamSpec('hnsw_m', 32, 'HNSW links per node (map_index hnsw, compact): memory per '
              'keyframe grows with it.', 4, 256),
    ParamSpec('hnsw_ef_construction', 64, 'HNSW candidate list while adding (map_index hnsw, '
              'compact): add time grows with it.', 8, 4096),
    ParamSpec('prior_map_dirs', '', 'Other maps (other robots, other days) searched '
              'read-only beside this one, separated by the path separator (":"); their '
              "matches carry the map's number (1 = the first) and its session in "
              '/vpr/matches. Never written; a map of another model stops start-up.'),
    ParamSpec('hnsw_ef_search', 256, 'HNSW candidate list while searching (map_index hnsw, '
              'compact): search time grows with it, recall too.', 8, 65536),
    ParamSpec('autosave_period_s', 300.0, 'Save the map this often (0: only on shutdown and '
              'on ~/save_map). Each save writes the whole map, so under 1 s is refused.',
              0.0, 86400.0, min_on=1.0),
    # ---- outputs
    ParamSpec('loop_closure_output', False, 'Publish /vpr/loop_closure [t_query, t_match] '
              "(LIO-SAM's external loop-closure input)."),
    ParamSpec('markers_period_s', 1.0, 'Publish /vpr/markers this often (0: never); under '
              '0.1 s is refused (RViz gains nothing, a core is kept busy).', 0.0, 3600.0,
              min_on=0.1),
    ParamSpec('diagnostics_period_s', 1.0, 'Publish /diagnostics this often.', 0.1, 3600.0),
    ParamSpec('publish_status', False, 'Publish /vpr/status for every processed frame '
              '(debugging, benchmarks, tests).'),
)
BY_NAME: dict[str, ParamSpec] = {s.name: s for s in SPECS}
