"""
``vpr-eval --loop``: loop-closure evaluation of one sequence, and the calibrated operating point.

A robot does not query one traverse against another: it queries every frame against the frames
it saw *before*, outside a short exclusion window (its recent past always looks alike). This
mode plays a sequence (TB-Places indexes in order, a rosbag via ``vpr-extract-bag``'s reader,
or a reference/query folder pair played reference first: "the corridor as a loop") through that
rule and reports, per model:

* R@1 on revisiting frames: frames that can close a loop (at least one earlier frame outside
  the window is a true match: ψ > threshold, within ``--max-dist`` metres, or listed in the
  folder pair's CSV) whose best candidate is a true match;
* recall at the target precision (default 1.0) and the score threshold that reaches it
  (`vpr_ros.core.calibration`), from the best candidate of every frame, the way the node
  accepts its best candidate; with ``--verify`` also the (score, inlier) operating point, where
  the best candidate is the first of the top-k that passes geometric verification, as in the
  node;
* the precision-recall curve of best candidates (PNG) with the operating point marked.

With ``--node-keyframes`` the map holds only the frames the node's keyframe policy would store
(1 m / 15 deg / 5 s, or novelty without poses), as in the node: the setting to calibrate the
point a model ships with (a best candidate a few frames off the true place, where the true
frames are no keyframes, then counts as false, as it would in the node).

Frames the degenerate-frame gate rejects (`vpr_ros.core.degenerate`, as the node does) are
neither queries nor map entries (``--no-gate`` keeps them). The map holds every earlier frame,
not only the node's keyframes, so recall here is an upper bound of the node's at the same
threshold, while precision is the same rule.
"""
from dataclasses import dataclass
import os
from typing import Any, Optional, Sequence

import numpy as np

from vpr_ros.core.calibration import calibrate, OperatingPoint, precision_recall
from vpr_ros.core.degenerate import DegenerateGate, reason_key
from vpr_ros.core.metrics import positives_from_distance
from vpr_ros.core.psi import POSITIVE_PSI
from vpr_ros.core.psi import positives as psi_positives
from vpr_ros.core.tbplaces import image_root, read_index

DEFAULT_EXCLUSION_FRAMES = 50
DEFAULT_TOP_K = 5


@dataclass
class LoopSequence:
    """Frames in the order they were seen, and what their ground truth is made of."""

    paths: list[str]
    poses: Optional[np.ndarray]           # (N, 7) or None
    pairs: Optional[list[set]]            # per frame, the true earlier frames (pair list)
    stamps_s: Optional[np.ndarray]        # (N,) or None (then exclusion counts frames)
    source: str


def _is_bag(path: str) -> bool:
    return (os.path.isdir(path) and os.path.exists(os.path.join(path, 'metadata.yaml'))) or \
        path.endswith(('.bag', '.mcap', '.db3'))


def read_sequence(inputs: Sequence[str] = (), folder: Optional[str] = None,
                  gt_csv: Optional[str] = None, work_dir: Optional[str] = None,
                  rate_hz: Optional[float] = None, image_topic: Optional[str] = None,
                  pose_topic: Optional[str] = None) -> LoopSequence:
    """
    One sequence from TB-Places indexes and bags (concatenated in order) or a folder pair.

    Bags are extracted (all frames, poses of `pose_topic` interpolated: give the ground-truth
    topic when the bag has odometry too) into ``work_dir``. ``rate_hz`` gives
    stamps to indexes and folders, which carry none, so the exclusion can be in seconds.
    """
    if folder:
        if inputs:
            raise ValueError('give either --loop sequences or --loop-folder, not both')
        from vpr_ros.training.data.folder_pair import read_folder_pair
        refs, queries, listed = read_folder_pair(folder, gt_csv)
        where = {os.path.normpath(p): i for i, p in enumerate(refs)}
        pairs = [set() for _ in refs]
        for q_refs in listed:
            pairs.append({where[os.path.normpath(r)] for r in q_refs
                          if os.path.normpath(r) in where})
        paths = refs + queries
        stamps = None if not rate_hz else np.arange(len(paths)) / float(rate_hz)
        return LoopSequence(paths, None, pairs, stamps, f'folder {folder} (ref, then query)')
    if not inputs:
        raise ValueError('loop mode needs --loop SEQUENCE... or --loop-folder DIR')
    paths, poses, stamps = [], [], []
    for k, src in enumerate(inputs):
        if _is_bag(src):
            from vpr_ros.training.data.extract_bag import extract
            if work_dir is None:  # never write into the current directory
                import tempfile
                work_dir = tempfile.mkdtemp(prefix='vpr_loop_')
            out = os.path.join(work_dir, f'loop_bag_{k}')
            try:
                summary = extract(src, out, image_topic, pose_topic, all_frames=True,
                                  progress=False)
            except SystemExit as err:  # the extractor's command-line refusals
                raise ValueError(f'{src}: {err}') from None
            index_path, bag_stamps = summary['index'], np.asarray(summary['stamps_ns']) / 1e9
        else:
            index_path, bag_stamps = src, None
        idx = read_index(index_path)
        root = image_root(index_path, idx.im_prefix)
        paths += [os.path.join(root, p) for p in idx.im_paths]
        poses.append(idx.poses)
        stamps.append(bag_stamps if bag_stamps is not None else
                      np.arange(len(idx.im_paths)) / float(rate_hz) if rate_hz else None)
    known = all(s is not None for s in stamps)
    st = None
    if known:  # later inputs follow the earlier ones in time
        st, offset = [], 0.0
        for s in stamps:
            s = np.asarray(s, np.float64)
            st.append(s - (s[0] if len(s) else 0.0) + offset)
            offset = st[-1][-1] + 1e6 if len(s) else offset
        st = np.concatenate(st) if st else np.zeros(0)
    return LoopSequence(paths, np.concatenate(poses).reshape(-1, 7), None, st,
                        ', '.join(inputs))


def earlier_allowed(seq: LoopSequence, exclusion_frames: int,
                    exclusion_s: Optional[float]) -> np.ndarray:
    """Per frame, how many of the frames before it are outside the exclusion window."""
    n = len(seq.paths)
    if exclusion_s is not None and seq.stamps_s is not None:
        # frames j < i with stamp_j < stamp_i - exclusion_s; stamps increase along the sequence
        return np.searchsorted(seq.stamps_s, seq.stamps_s - exclusion_s, side='left')
    return np.clip(np.arange(n) - exclusion_frames, 0, None)


def loop_positives(seq: LoopSequence, allowed: np.ndarray, hit: str = 'psi',
                   psi_threshold: float = POSITIVE_PSI, fov_deg: float = 90.0,
                   radius: float = 3.5, max_dist: float = 2.0) -> list[np.ndarray]:
    """Return the true matches of each frame among the earlier frames it may match."""
    if seq.pairs is not None:
        pos = [np.array(sorted(p), dtype=np.int64) for p in seq.pairs]
    elif hit == 'psi':
        pos = psi_positives(seq.poses, seq.poses, psi_threshold, fov_deg, radius)
    elif hit == 'distance':
        pos = positives_from_distance(seq.poses[:, :2], seq.poses[:, :2], max_dist)
    else:
        raise ValueError(f"hit must be 'psi' or 'distance', not {hit!r}")
    return [np.asarray(p, dtype=np.int64)[np.asarray(p, dtype=np.int64) < allowed[i]]
            for i, p in enumerate(pos)]


def _frame_pass(seq: LoopSequence, gate: Optional[DegenerateGate], verifier) -> dict:
    """Read every frame once: gate reason and (with verification) local features."""
    from vpr_ros.training.eval.embedding import read_rgb
    gated = np.zeros(len(seq.paths), bool)
    reasons: dict[str, int] = {}
    feats: list[Any] = [None] * len(seq.paths)
    unreadable = 0
    if gate is None and verifier is None:
        return {'gated': gated, 'reasons': reasons, 'features': feats, 'unreadable': 0}
    for i, p in enumerate(seq.paths):
        try:
            img = read_rgb(p)
        except (OSError, ValueError):
            unreadable += 1
            continue  # embed_paths skips it too
        reason = gate(img, 'rgb8') if gate is not None else None
        if reason:
            gated[i] = True
            reasons[reason_key(reason)] = reasons.get(reason_key(reason), 0) + 1
        elif verifier is not None:
            feats[i] = verifier.extract(img, 'rgb8')
    return {'gated': gated, 'reasons': reasons, 'features': feats, 'unreadable': unreadable}


def node_keyframes(desc: np.ndarray, usable: np.ndarray, seq: LoopSequence) -> np.ndarray:
    """
    Which frames the node would store as keyframes (its KeyframePolicy and defaults).

    The node searches keyframes only (every 1 m / 15 deg / 5 s, or by novelty without poses),
    so a threshold fitted against every earlier frame would meet, in the node, best
    candidates a few frames off the true place. Without stamps, frames are 1 s apart.
    """
    from vpr_ros.core.detector import DetectorConfig
    from vpr_ros.core.keyframe import KeyframePolicy
    from vpr_ros.core.pose_buffer import Pose
    c = DetectorConfig()
    policy = KeyframePolicy(c.kf_min_distance_m, c.kf_min_angle_deg, c.kf_max_interval_s,
                            c.kf_novelty_threshold, reset_back_s=c.reset_back_s)
    stamps = seq.stamps_s if seq.stamps_s is not None else np.arange(len(desc), dtype=float)
    is_kf = np.zeros(len(desc), bool)
    last = None
    for i in np.flatnonzero(usable):
        t = int(round(stamps[i] * 1e9))
        pose = None if seq.poses is None else Pose.from_vector(t, seq.poses[i])
        sim = float(desc[i] @ desc[last]) if pose is None and last is not None else None
        if policy.decide(t, pose, sim).is_keyframe:
            policy.accept(t, pose)
            is_kf[i], last = True, i
    return is_kf


def best_candidates(desc: np.ndarray, usable: np.ndarray, allowed: np.ndarray,
                    top_k: int = 1, verifier=None, features=None,
                    map_mask: Optional[np.ndarray] = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Per frame: index, score and inliers of its best candidate among the allowed earlier frames.

    Without a verifier the best is the top-scoring one (inliers -1); with one, the first of the
    top-k (score order) that passes verification, as the node picks it (inliers 0 if none does,
    then the top-scoring one stands as the rejected candidate). Index -1 / score NaN: none.
    `map_mask`: the frames that are in the map (the node's keyframes), None: all.
    """
    n = len(desc)
    best = np.full(n, -1, np.int64)
    score = np.full(n, np.nan)
    inliers = np.full(n, -1 if verifier is None else 0, np.int64)
    ids = np.flatnonzero(usable if map_mask is None else usable & map_mask)
    for i in np.flatnonzero(usable):
        cand = ids[ids < allowed[i]]
        if len(cand) == 0:
            continue
        s = desc[cand] @ desc[i]
        order = np.argsort(-s, kind='stable')[:max(1, top_k)]
        best[i], score[i] = cand[order[0]], float(s[order[0]])
        if verifier is None:
            continue
        for o in order:
            res = verifier.verify(features[i], features[cand[o]])
            if res.ok:
                best[i], score[i], inliers[i] = cand[o], float(s[o]), res.inliers
                break
    return best, score, inliers


def score_model(desc: np.ndarray, usable: np.ndarray, allowed: np.ndarray,
                positives: list[np.ndarray], target_precision: float, data: dict,
                top_k: int = DEFAULT_TOP_K, verifier=None, features=None,
                map_mask: Optional[np.ndarray] = None) -> dict:
    """R@1 on revisiting frames, the operating point(s) and the PR curve of one model."""
    in_map = usable if map_mask is None else usable & map_mask
    can_close = np.array([usable[i] and any(in_map[j] for j in positives[i])
                          for i in range(len(desc))])
    best, score, inl = best_candidates(desc, usable, allowed, 1, map_mask=map_mask)
    correct = np.array([b >= 0 and b in set(positives[i].tolist()) for i, b in enumerate(best)])
    queried = usable & (best >= 0)
    point = calibrate(score[queried], correct[queried], can_close[queried],
                      target_precision=target_precision, data=data)
    n_revisit = int(can_close.sum())
    prec, rec, thr = precision_recall(score[queried], correct[queried], can_close[queried])
    # per query (the frames with a candidate), so several sets can be calibrated jointly
    row_queries = {'score': score[queried].round(6).tolist(),
                   'correct': correct[queried].astype(int).tolist(),
                   'can_close': can_close[queried].astype(int).tolist()}
    row = {'n_queries': int(queried.sum()), 'n_revisit': n_revisit, 'queries': row_queries,
           'recall_at_1': float(correct[can_close].mean()) if n_revisit else float('nan'),
           'operating_point': point.to_dict(),
           'pr_curve': {'precision': prec.tolist(), 'recall': rec.tolist(),
                        'threshold': thr.tolist()}}
    if verifier is not None:
        vbest, vscore, vinl = best_candidates(desc, usable, allowed, top_k, verifier, features,
                                              map_mask)
        vcorrect = np.array([b >= 0 and b in set(positives[i].tolist())
                             for i, b in enumerate(vbest)])
        vpoint = calibrate(vscore[queried], vcorrect[queried], can_close[queried],
                           inliers=vinl[queried], target_precision=target_precision,
                           data={**data, 'verification': 'orb', 'top_k': top_k})
        row['operating_point_verified'] = vpoint.to_dict()
        row['queries'].update(score_verified=vscore[queried].round(6).tolist(),
                              correct_verified=vcorrect[queried].astype(int).tolist(),
                              inliers=vinl[queried].tolist())
        row['recall_at_1_verified'] = (float(vcorrect[can_close].mean()) if n_revisit
                                       else float('nan'))
    return row


def evaluate_loop(inputs: Sequence[str] = (), folder: Optional[str] = None,
                  gt_csv: Optional[str] = None, models: Sequence[Any] = (),
                  include_default: bool = True, hit: str = 'psi',
                  psi_threshold: float = POSITIVE_PSI, fov_deg: float = 90.0,
                  radius: float = 3.5, max_dist: float = 2.0,
                  exclusion_frames: int = DEFAULT_EXCLUSION_FRAMES,
                  exclusion_s: Optional[float] = None, rate_hz: Optional[float] = None,
                  target_precision: float = 1.0, verify: bool = False,
                  top_k: int = DEFAULT_TOP_K, gate: bool = True, keyframes: bool = False,
                  image_size: Optional[Sequence[int]] = None, out_dir: Optional[str] = None,
                  device: str = 'auto', batch_size: int = 32, progress: bool = True,
                  cache_dir: Optional[str] = None, verbose: bool = True,
                  topics: Optional[tuple] = None) -> dict:
    """
    Run the loop evaluation for every model; returns (with ``out_dir`` writes) the report.

    `topics`: (image topic, pose topic) of bags, None where the bag has one of the kind.
    """
    import time

    from vpr_ros.training.eval.embedding import DescriptorCache, embed_paths, resolve_models
    t0 = time.monotonic()
    seq = read_sequence(inputs, folder, gt_csv, out_dir, rate_hz, *(topics or (None, None)))
    allowed = earlier_allowed(seq, exclusion_frames, exclusion_s)
    positives = loop_positives(seq, allowed, hit, psi_threshold, fov_deg, radius, max_dist)
    verifier = None
    if verify:
        from vpr_ros.core.detector import DetectorConfig
        # the node's verifier, accepting from 1 inlier: the threshold is what calibration finds
        verifier = DetectorConfig(gv_min_inliers=1).make_verifier()
    frames = _frame_pass(seq, DegenerateGate() if gate else None, verifier)
    encoders = resolve_models(models, include_default, device, image_size)
    gt = ({'rule': 'pairs', 'csv': gt_csv or os.path.join(folder, 'ground_truth.csv')}
          if folder else {'rule': hit, **({'threshold': psi_threshold, 'fov_deg': fov_deg,
                                           'radius_m': radius} if hit == 'psi'
                                          else {'max_dist_m': max_dist})})
    excl = ({'seconds': exclusion_s} if exclusion_s is not None and seq.stamps_s is not None
            else {'frames': exclusion_frames})
    data = {'name': os.path.basename(os.path.normpath(folder)) + ' as a loop' if folder
            else ', '.join(os.path.relpath(p, os.path.dirname(os.path.dirname(
                os.path.abspath(p)))) for p in inputs),
            'source': seq.source, 'n_frames': len(seq.paths), 'ground_truth': gt,
            'exclusion': excl, 'gate': gate,
            'map': 'node keyframes (KeyframePolicy defaults)' if keyframes else 'every frame'}
    rows = []
    for name, src, enc in encoders:
        fp = str(getattr(enc, 'fingerprint', '') or '')
        cache = DescriptorCache.for_model(cache_dir, enc, src)
        desc, ok, _ = embed_paths(enc, seq.paths, batch_size, f'{name} loop', progress,
                                  cache.entries)
        cache.save()
        usable = ok & ~frames['gated']
        kf = node_keyframes(desc, usable, seq) if keyframes else None
        row = score_model(desc, usable, allowed, positives, target_precision,
                          {**data, 'model': src or 'built-in default', 'fingerprint': fp},
                          top_k, verifier, frames['features'], kf)
        row['n_map'] = int(usable.sum() if kf is None else (usable & kf).sum())
        rows.append({'name': name, 'model': src, 'fingerprint': fp, **row})
    report = {'mode': 'loop', 'dataset': {**data, 'gated': int(frames['gated'].sum()),
                                          'gate_reasons': frames['reasons'],
                                          'unreadable': frames['unreadable']},
              'target_precision': target_precision,
              'image_size': list(image_size) if image_size else None,
              'rows': rows, 'seconds': round(time.monotonic() - t0, 2)}
    from vpr_ros.training.eval.loop_report import format_loop_table, write_loop_report
    if out_dir:
        report['files'] = write_loop_report(report, out_dir)
    if verbose:
        print(format_loop_table(report))
    return report


def best_operating_point(report: dict, row: int = 0, verified: bool = True) -> OperatingPoint:
    """Return one report row's operating point (the verified one when present and asked for)."""
    r = report['rows'][row]
    key = 'operating_point_verified' if verified and 'operating_point_verified' in r \
        else 'operating_point'
    return OperatingPoint.from_dict(r[key])


def calibrate_jointly(reports: Sequence[dict], verified: bool = True, row: int = 0,
                      target_precision: float = 1.0, name: str = '') -> OperatingPoint:
    """
    One operating point over several loop reports (e.g. the demo loop and the corridor).

    The point must hold on every set at once, so their queries are pooled; `data` names each
    set with the recall the joint point keeps there.
    """
    parts = []
    for rep in reports:
        q = rep['rows'][row]['queries']
        v = verified and 'inliers' in q
        parts.append((np.asarray(q['score_verified' if v else 'score'], float),
                      np.asarray(q['correct_verified' if v else 'correct'], bool),
                      np.asarray(q['can_close'], bool),
                      np.asarray(q['inliers']) if v else None))
    use_inl = all(p[3] is not None for p in parts)
    cat = [np.concatenate([p[k] for p in parts]) for k in range(3)]
    inl = np.concatenate([p[3] for p in parts]) if use_inl else None
    sets = [{k: rep['dataset'][k] for k in ('name', 'source', 'n_frames', 'ground_truth',
                                            'exclusion')} for rep in reports]
    point = calibrate(*cat, inliers=inl, target_precision=target_precision,
                      data={'name': name or ' + '.join(s['name'] for s in sets), 'sets': sets,
                            'verification': 'orb' if use_inl else None,
                            'model': reports[0]['rows'][row].get('model') or 'built-in default',
                            'fingerprint': reports[0]['rows'][row].get('fingerprint', ''),
                            'image_size': reports[0].get('image_size')})
    for s, (sc, corr, can, ii) in zip(sets, parts):
        acc = np.nan_to_num(sc, nan=-np.inf) >= point.score_threshold
        if ii is not None and point.min_inliers is not None:
            acc &= ii >= point.min_inliers
        s['recall'] = float((acc & corr).sum() / max(1, can.sum()))
        s['false_accepted'] = int((acc & ~corr).sum())
    return point


def add_loop_arguments(parser) -> None:
    """Add the loop-mode options of vpr-eval (and of vpr-export's calibration)."""
    g = parser.add_argument_group('loop mode (one sequence queried against its own past)')
    g.add_argument('--loop', nargs='+', default=[], metavar='INDEX.json|BAG',
                   help='sequence(s) played in order: TB-Places indexes or rosbags')
    g.add_argument('--loop-folder', metavar='DIR',
                   help='ref/ then query/ of a folder pair, ground truth from its CSV')
    g.add_argument('--loop-image-topic', help='image topic of --loop bags')
    g.add_argument('--loop-pose-topic', help='ground-truth pose topic of --loop bags')
    g.add_argument('--exclusion-frames', type=int, default=DEFAULT_EXCLUSION_FRAMES,
                   help=f'recent frames never matched (default {DEFAULT_EXCLUSION_FRAMES})')
    g.add_argument('--exclusion-s', type=float, default=None,
                   help='exclusion window in seconds (bags, or with --rate-hz)')
    g.add_argument('--rate-hz', type=float, default=None,
                   help='frame rate of indexes/folders, for --exclusion-s')
    g.add_argument('--target-precision', type=float, default=1.0)
    g.add_argument('--verify', action='store_true',
                   help='also calibrate (score, inliers) with ORB geometric verification')
    g.add_argument('--top-k', type=int, default=DEFAULT_TOP_K,
                   help='candidates verified per frame with --verify')
    g.add_argument('--no-gate', action='store_true',
                   help='keep frames the degenerate-frame gate rejects')
    g.add_argument('--node-keyframes', action='store_true',
                   help='match against the frames the node would keep as keyframes only '
                        '(its keyframe policy), as the node does: the calibration to ship')


def run_from_args(args) -> dict:
    """Vpr-eval's loop mode from its parsed arguments."""
    return evaluate_loop(
        args.loop, folder=args.loop_folder, gt_csv=args.gt, models=args.model,
        include_default=not args.no_default, hit=args.hit, psi_threshold=args.psi_threshold,
        fov_deg=args.fov_deg, radius=args.radius, max_dist=args.max_dist,
        exclusion_frames=args.exclusion_frames, exclusion_s=args.exclusion_s,
        rate_hz=args.rate_hz, target_precision=args.target_precision, verify=args.verify,
        top_k=args.top_k, gate=not args.no_gate, keyframes=args.node_keyframes,
        image_size=args.image_size,
        out_dir=args.out, device=args.device, batch_size=args.batch_size,
        progress=not args.no_progress, cache_dir=args.cache,
        topics=(args.loop_image_topic, args.loop_pose_topic))
