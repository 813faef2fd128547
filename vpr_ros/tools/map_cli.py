"""
`vpr-map`: look at, merge, export and prune vpr_ros maps (a fleet's maps, yesterday's map).

    vpr-map info MAP [--json]                    sessions, keyframes, model, index, sizes
    vpr-map merge A B --out C [--names R1 R2]    two robots' maps into one new map
    vpr-map export MAP --out map.npz             descriptors, ids, stamps, poses, sessions
    vpr-map prune MAP --session N [N ...] | --older-than DAYS [--dry-run]

Maps are read through the map's checked loader and written as normal generations
(vpr_ros/map/fleet.py): a merged or pruned map is one a node loads and continues. Bad input (no
map, a damaged one, maps of two models, a map a running node holds) ends with a message on
stderr and exit code 2; nothing is written outside the output (merge: --out; prune: MAP;
export: the one file).
"""
import argparse
import json
import sys
import time

from vpr_ros.core.errors import VPRError
from vpr_ros.map import fleet

EXIT_BAD_INPUT = 2


def _mib(n: int) -> str:
    return f'{n / 2**20:.1f} MiB'


def _utc(s: float) -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(s)) + f'.{int(s % 1 * 1000):03d}Z'


def _print_info(d: dict) -> None:
    idx = d['index']
    print(f'map {d["directory"]} ({d["generation"]})')
    print(f'  model       {d["fingerprint"]} (dim {d["dim"]})')
    print(f'  index       {idx["type"]} (M {idx["hnsw_m"]}, efConstruction '
          f'{idx["hnsw_ef_construction"]}, efSearch {idx["hnsw_ef_search"]})')
    print(f'  keyframes   {d["keyframes"]} ({d["keyframes_with_blobs"]} with features), next id '
          f'{d["next_id"]}, sessions {d["session_count"]}')
    for s in d['sessions']:
        origin = f'  from {s["from"]["source"]} session {s["from"]["session"]}' \
            if s['from'] else ''
        print(f'  session {s["session"]:>4}: {s["keyframes"]:>7} keyframes, '
              f'{_utc(s["first_stamp_s"])} .. {_utc(s["last_stamp_s"])} '
              f'({s["last_stamp_s"] - s["first_stamp_s"]:.1f} s){origin}')
    files = ', '.join(f'{k} {_mib(v)}' for k, v in sorted(d['files'].items()))
    print(f'  on disk     {_mib(d["generation_bytes"])} ({files}); directory '
          f'{_mib(d["directory_bytes"])}')
    if d['aside']:
        print(f'  aside       {len(d["aside"])} earlier map(s): {", ".join(d["aside"])}')


def _run(args: argparse.Namespace) -> None:
    if args.command == 'info':
        d = fleet.info(args.map, verify=not args.no_verify)
        if args.json:
            print(json.dumps(d, indent=1))
        else:
            _print_info(d)
    elif args.command == 'merge':
        rec = fleet.merge(args.a, args.b, args.out, names=args.names,
                          verify=not args.no_verify)
        a, b = rec['maps']
        print(f'merged {a["name"]} ({a["keyframes"]} keyframes) and {b["name"]} '
              f'({b["keyframes"]}) into {args.out}: {rec["keyframes"]} keyframes, '
              f'{len(rec["sessions"])} sessions ({b["name"]}\'s from {b["session_offset"]} on)')
        remapped = rec['remapped_ids'][b['name']]
        print(f'{len(remapped)} ids of {b["name"]} collided and were renumbered'
              + (f' ({remapped[0][0]} -> {remapped[0][1]}, ...)' if remapped else '')
              + f'; the mapping is in {args.out}/{fleet.MERGE_RECORD}')
    elif args.command == 'export':
        r = fleet.export_npz(args.map, args.out, verify=not args.no_verify)
        print(f'exported {r["keyframes"]} keyframes (dim {r["dim"]}) to {r["file"]} '
              f'({_mib(r["bytes"])})')
    else:
        if not args.session and args.older_than is None:
            raise VPRError('prune needs --session N [N ...] or --older-than DAYS')
        if args.older_than is not None and not args.older_than >= 0:
            raise VPRError(f'--older-than must be a number of days >= 0, got {args.older_than}')
        r = fleet.prune(args.map, sessions=args.session or (),
                        older_than_s=None if args.older_than is None
                        else args.older_than * 86400.0, dry_run=args.dry_run,
                        verify=not args.no_verify)
        verb = 'would remove' if args.dry_run else 'removed'
        print(f'{verb} {r["removed"]} keyframes ({r["removed_by_session"] or "none"} by '
              f'session), kept {r["kept"]}; map at {r["generation"]}')


def parser() -> argparse.ArgumentParser:
    """Build the command line (one subcommand each)."""
    p = argparse.ArgumentParser(prog='vpr-map', description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--no-verify', action='store_true',
                   help="skip the files' sha256 check (faster on large maps)")
    sub = p.add_subparsers(dest='command', required=True)
    s = sub.add_parser('info', help='sessions, keyframes, model, index kind, sizes')
    s.add_argument('map')
    s.add_argument('--json', action='store_true', help='print JSON')
    s = sub.add_parser('merge', help='merge two maps of one model into a new map')
    s.add_argument('a')
    s.add_argument('b')
    s.add_argument('--out', required=True, help='new (or empty) map directory')
    s.add_argument('--names', nargs=2, metavar=('NAME_A', 'NAME_B'),
                   help='robot/map names recorded for the sessions (default: directory names)')
    s = sub.add_parser('export', help='descriptors, ids, stamps, poses, sessions to .npz')
    s.add_argument('map')
    s.add_argument('--out', required=True, help='the .npz file to write')
    s = sub.add_parser('prune', help='remove sessions or old keyframes (a new generation)')
    s.add_argument('map')
    s.add_argument('--session', type=int, nargs='+', help='session numbers to remove')
    s.add_argument('--older-than', type=float, metavar='DAYS',
                   help='remove keyframes stamped more than DAYS before now (UTC)')
    s.add_argument('--dry-run', action='store_true', help='say what would go, change nothing')
    return p


def main(argv: list[str] | None = None) -> int:
    """Run `vpr-map`; exit 2 with a message for bad input (argparse's own errors exit 2 too)."""
    args = parser().parse_args(argv)
    try:
        _run(args)
    except (VPRError, OSError) as err:
        print(f'vpr-map {args.command}: {err}', file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == '__main__':
    sys.exit(main())
