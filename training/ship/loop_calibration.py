"""
`vpr-export --calibrate-loop`: fit the operating point of the network being exported.

The exported network is replayed through the node's own detector by the loop evaluation
(training/eval/loop_mode.py) on one or more validation loops; the rule's thresholds (score,
inliers, sequence confidence) that reach the target precision on all of them at once are fitted
by the node's `decide` (`calibrate_jointly`), and go into the model file's provenance
(`vpr_ros.model.operating_point.PROVENANCE_KEY`) with the data it was fitted on. The node then
runs the model at that point unless `score_threshold` is set (vpr_ros/ros/detector_config.py).
"""
import copy
from typing import Optional, Sequence

from vpr_ros.core.calibration import OperatingPoint
from vpr_ros.training.eval.loop_mode import calibrate_jointly, DEFAULT_TOP_K, evaluate_loop


def add_calibration_arguments(parser) -> None:
    """Add vpr-export's calibration options."""
    g = parser.add_argument_group('calibrated operating point (stored in the model file)')
    g.add_argument('--calibrate-loop', nargs='+', action='append', default=[],
                   metavar='INDEX.json|BAG', help='a validation loop: TB-Places indexes or bags '
                   'played in order (repeat the option for more loops)')
    g.add_argument('--calibrate-loop-folder', action='append', default=[], metavar='DIR',
                   help='a folder pair played ref then query as a loop (repeatable)')
    g.add_argument('--calibrate-verify', action='store_true',
                   help='fit (score, inliers) with ORB verification, as the node runs it '
                        '(the default)')
    g.add_argument('--calibrate-no-verify', action='store_true',
                   help='fit without verification (a node with geometric_verification false)')
    g.add_argument('--calibrate-no-sequence', action='store_true',
                   help='fit the single-frame rule only (no confidence_threshold)')
    g.add_argument('--calibrate-loop-image-topic', help='image topic of --calibrate-loop bags')
    g.add_argument('--calibrate-loop-pose-topic',
                   help='ground-truth pose topic of --calibrate-loop bags')
    g.add_argument('--calibrate-loop-odom-topic',
                   help="the node's pose topic in --calibrate-loop bags (default: the pose "
                        'topic; none: a node without a pose topic)')
    g.add_argument('--calibrate-loop-no-pose-too', action='store_true',
                   help='replay every --calibrate-loop a second time as a node without a pose '
                        'topic, so the time margin holds for camera-only nodes too (the built-in '
                        'point is fitted so)')
    g.add_argument('--calibrate-exclusion-frames', type=int, default=None)
    g.add_argument('--calibrate-exclusion-s', type=float, default=None)
    g.add_argument('--calibrate-rate-hz', type=float, default=None)
    g.add_argument('--target-precision', type=float, default=1.0)


def calibration_from_args(args) -> Optional[dict]:
    """Return `calibrate_net` keyword arguments from parsed options (None: not asked for)."""
    if not args.calibrate_loop and not args.calibrate_loop_folder:
        return None
    return {'loops': [list(x) for x in args.calibrate_loop],
            'folders': list(args.calibrate_loop_folder), 'verify': not args.calibrate_no_verify,
            'sequence': not args.calibrate_no_sequence,
            'exclusion_frames': args.calibrate_exclusion_frames,
            'exclusion_s': args.calibrate_exclusion_s, 'rate_hz': args.calibrate_rate_hz,
            'target_precision': args.target_precision,
            'topics': (args.calibrate_loop_image_topic, args.calibrate_loop_pose_topic,
                       args.calibrate_loop_odom_topic),
            'no_pose_too': args.calibrate_loop_no_pose_too}


def calibrate_net(net, loops: Sequence[Sequence[str]] = (), folders: Sequence[str] = (),
                  verify: bool = True, exclusion_frames: Optional[int] = None,
                  exclusion_s: Optional[float] = None, rate_hz: Optional[float] = None,
                  target_precision: float = 1.0, device: str = 'cpu',
                  work_dir: Optional[str] = None, sequence: bool = True,
                  topics: Optional[tuple] = None, no_pose_too: bool = False) -> OperatingPoint:
    """
    Run `net` (a copy: the export keeps its own) on every loop; return the joint point.

    `topics`: (image, ground-truth pose, odometry) of bag loops (odometry 'none': a node
    without a pose topic). `no_pose_too`: each loop is replayed again without a pose topic.
    """
    from vpr_ros.model.encoder import Encoder

    enc = Encoder(copy.deepcopy(net), 'vpr-export (this network)', device=device)
    reports = []
    topics = tuple(topics or (None, None, None))
    runs = [dict(inputs=list(x), topics=topics) for x in loops]
    if no_pose_too:
        runs += [dict(inputs=list(x), topics=topics[:2] + ('none',)) for x in loops]
    runs += [dict(folder=f) for f in folders]
    if not runs:
        raise ValueError('calibration needs at least one loop or loop folder')
    for run in runs:
        reports.append(evaluate_loop(
            models=[('export', enc)], include_default=False, exclusion_frames=exclusion_frames,
            exclusion_s=exclusion_s, rate_hz=rate_hz, target_precision=target_precision,
            verify=verify, top_k=DEFAULT_TOP_K, keyframes=True, out_dir=work_dir,
            device=device,
            progress=False, verbose=False, **run))
    return calibrate_jointly(reports, target_precision=target_precision, sequence=sequence)
