"""
vpr-sim: render simulated garden traverses to a TB-Places folder and/or rosbag2 (mcap) bags.

Examples:
  vpr-sim --out /tmp/garden                          # the default set (3 traverses)
  vpr-sim --out /tmp/g --seed 3 --size 640x480 --traverse loop:loop:noon \
          --traverse dusk:loop_once:evening,fog=40 --no-bag --odom-drift 0.02
  vpr-sim --default                                  # print (and fill) the cached default set

"""
import argparse
import sys

from vpr_ros.sim.dataset import (
    cached_dataset,
    DEFAULT_TRAVERSES,
    generate,
    SimParams,
    TraverseConfig,
)
from vpr_ros.sim.trajectories import ROUTES


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WxH, got {text!r}') from None
    return w, h


def _traverse(text: str) -> TraverseConfig:
    """NAME:ROUTE:CONDITION[:SPEED]; ROUTE is a named route or crossings joined by '-'."""
    parts = text.split(':')
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(
            f'traverse must be NAME:ROUTE:CONDITION[:SPEED], got {text!r}')
    route = parts[1] if parts[1] in ROUTES else tuple(parts[1].split('-'))
    speed = float(parts[3]) if len(parts) == 4 else 1.0
    return TraverseConfig(parts[0], route, parts[2], speed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vpr-sim', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='output folder (new or empty); omit with --default')
    p.add_argument('--default', action='store_true',
                   help='generate into the cache ($VPR_ROS_CACHE/sim/<hash>) and print its path')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--size', type=_size, default=(320, 240), help='WxH (default 320x240)')
    p.add_argument('--hfov', type=float, default=90.0, help='horizontal field of view, deg')
    p.add_argument('--rate', type=float, default=5.0, help='camera rate, Hz')
    p.add_argument('--pose-rate', type=float, default=20.0,
                   help='odometry/ground-truth rate, Hz (integer multiple of --rate)')
    p.add_argument('--frames', type=int, default=None, help='at most this many per traverse')
    p.add_argument('--traverse', type=_traverse, action='append', default=None,
                   metavar='NAME:ROUTE:CONDITION[:SPEED]',
                   help=f'repeatable; routes: {", ".join(sorted(ROUTES))} or e.g. SW-S-C; '
                        'condition: preset (noon, morning, evening, fog, winter, overcast, '
                        'dusk, night) with overrides, e.g. evening,fog=30, hour=9,season=winter '
                        'or night,gain=8,lamps=off')
    p.add_argument('--folder', action=argparse.BooleanOptionalAction, default=True,
                   help='write the TB-Places folder')
    p.add_argument('--bag', action=argparse.BooleanOptionalAction, default=True,
                   help='write one rosbag2 (mcap) per traverse')
    p.add_argument('--odom-drift', type=float, default=0.0,
                   help='odometry error level: 0 exact, 1 the wheel-odometry profile of '
                        'vpr_ros/sim/odometry.py (scale, turn and heading-bias errors, random '
                        'walk, integrated from increments)')
    p.add_argument('--noise', type=float, default=1.5, help='sensor noise sigma (grey levels)')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out and not args.default:
        print('vpr-sim: give --out DIR or --default', file=sys.stderr)
        return 2
    params = SimParams(seed=args.seed, width=args.size[0], height=args.size[1],
                       hfov_deg=args.hfov, rate_hz=args.rate, pose_rate_hz=args.pose_rate,
                       traverses=tuple(args.traverse or DEFAULT_TRAVERSES), folder=args.folder,
                       bag=args.bag, odom_drift=args.odom_drift, noise_sigma=args.noise,
                       max_frames=args.frames)
    try:
        if args.default and not args.out:
            paths = cached_dataset(params)
        else:
            paths = generate(params, args.out)
    except (ValueError, FileExistsError) as exc:
        print(f'vpr-sim: {exc}', file=sys.stderr)
        return 2
    t = paths.meta.get('timing', {})
    print(f'root: {paths.root}')
    for idx in paths.indices:
        print(f'index: {idx}')
    for bag in paths.bags:
        print(f'bag: {bag}')
    if t:
        print(f"{t['frames']} frames in {t['total_s']:.1f} s "
              f"({t['render_ms_per_frame']:.1f} ms/frame rendering)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
