"""
The command line of vpr-eval's loop mode (and of what vpr-export's calibration shares).

Options are turned into `training/eval/loop_mode.evaluate_loop` arguments here, so the loop
evaluation itself stays callable from code without argparse; `--detector FIELD=VALUE` reaches
any DetectorConfig field, typed by its default, as the node parameter of that name would.
"""
import dataclasses
from typing import Sequence

from vpr_ros.core.detector import DetectorConfig
from vpr_ros.training.eval.loop_mode import DEFAULT_TOP_K, evaluate_loop
from vpr_ros.training.eval.loop_replay import DEFAULT_RATE_HZ


def add_loop_arguments(parser) -> None:
    """Add the loop-mode options of vpr-eval (and of vpr-export's calibration)."""
    g = parser.add_argument_group('loop mode (one sequence queried against its own past)')
    g.add_argument('--loop', nargs='+', default=[], metavar='INDEX.json|BAG',
                   help='sequence(s) played in order: TB-Places indexes or rosbags')
    g.add_argument('--loop-folder', metavar='DIR',
                   help='ref/ then query/ of a folder pair, ground truth from its CSV')
    g.add_argument('--loop-image-topic', help='image topic of --loop bags')
    g.add_argument('--loop-pose-topic', help='ground-truth pose topic of --loop bags')
    g.add_argument('--loop-odom-topic', help="the node's pose topic in --loop bags "
                   '(keyframes, sequence alignment; default: --loop-pose-topic; none: the '
                   'node has no pose topic, the poses stay the ground truth)')
    g.add_argument('--exclusion-frames', type=int, default=None,
                   help="recent frames never matched, at --rate-hz (default: the node's "
                        'exclusion_window_s)')
    g.add_argument('--exclusion-s', type=float, default=None,
                   help="exclusion window in seconds (default: the node's, "
                        f'{DetectorConfig().exclusion_s:g})')
    g.add_argument('--rate-hz', type=float, default=None,
                   help=f'frame rate of indexes/folders (default {DEFAULT_RATE_HZ:g})')
    g.add_argument('--target-precision', type=float, default=1.0)
    g.add_argument('--verify', action='store_true',
                   help='ORB geometric verification (the default, as in the node)')
    g.add_argument('--no-verify', action='store_true',
                   help='decide without verification (geometric_verification false)')
    g.add_argument('--top-k', type=int, default=DEFAULT_TOP_K,
                   help="candidates per frame (the node's top_k)")
    g.add_argument('--no-gate', action='store_true',
                   help='keep frames the degenerate-frame gate rejects')
    g.add_argument('--node-keyframes', action='store_true',
                   help="the map holds the node's keyframes (the default)")
    g.add_argument('--sessions', action='store_true',
                   help='each --loop input is a session of its own: the node is restarted '
                        'with load_map between them (a day map, then a night traverse)')
    g.add_argument('--all-frames', action='store_true',
                   help='put every frame into the map (an upper bound of the node)')
    g.add_argument('--detector', action='append', default=[], metavar='FIELD=VALUE',
                   help='a DetectorConfig field set as the node parameter of that name would '
                        'set it (repeatable), e.g. gv_clahe_clip=4.0 kf_novelty_threshold=0.95')


def detector_overrides(items: Sequence[str]) -> dict:
    """`--detector FIELD=VALUE` items as DetectorConfig fields, typed by their defaults."""
    fields = {f.name: f for f in dataclasses.fields(DetectorConfig)}
    out = {}
    for item in items:
        name, sep, text = item.partition('=')
        name = name.strip()
        if not sep or name not in fields:
            raise SystemExit(f'--detector {item!r}: expected FIELD=VALUE with a DetectorConfig '
                             f'field, e.g. gv_clahe_clip=4.0')
        default = getattr(DetectorConfig(), name)
        try:
            if isinstance(default, bool):
                if text.lower() not in ('true', 'false'):
                    raise ValueError(text)
                value = text.lower() == 'true'
            elif isinstance(default, (int, float, str)):
                value = type(default)(text)
            else:
                raise SystemExit(f'--detector {name}: not settable from the command line')
        except ValueError:
            raise SystemExit(f'--detector {item!r}: {text!r} is not a '
                             f'{type(default).__name__}') from None
        out[name] = value
    return out


def run_from_args(args) -> dict:
    """Vpr-eval's loop mode from its parsed arguments."""
    return evaluate_loop(
        args.loop, folder=args.loop_folder, gt_csv=args.gt, models=args.model,
        include_default=not args.no_default, hit=args.hit, psi_threshold=args.psi_threshold,
        fov_deg=args.fov_deg, radius=args.radius, max_dist=args.max_dist,
        exclusion_frames=args.exclusion_frames, exclusion_s=args.exclusion_s,
        rate_hz=args.rate_hz, target_precision=args.target_precision,
        verify=not args.no_verify, top_k=args.top_k, gate=not args.no_gate,
        keyframes=not args.all_frames,
        image_size=args.image_size,
        out_dir=args.out, device=args.device, batch_size=args.batch_size,
        progress=not args.no_progress, cache_dir=args.cache,
        topics=(args.loop_image_topic, args.loop_pose_topic, args.loop_odom_topic),
        sessions=args.sessions, overrides=detector_overrides(args.detector))
