"""
``vpr-eval --loop``: the node's loop decisions on one sequence, and the calibrated point.

A robot does not query one traverse against another: it queries every frame against the
keyframes it stored *before*, outside a short exclusion window (its recent past always looks
alike). This mode plays a sequence (TB-Places indexes in order, rosbags, or a reference/query
folder pair played reference first: "the corridor as a loop") through the node's own detector
(training/eval/loop_replay.py: the map, keyframe policy, degenerate gate, verification and
sequence evidence of `vpr_ros.core.detector`), with the node's configuration, and reports per
model:

* R@1 on revisiting frames (frames with a true match among the keyframes stored outside the
  window: ψ > threshold, within ``--max-dist`` metres, or listed in the folder pair's CSV):
  the best single-frame candidate (``recall_at_1``) and the best-supported sequence candidate
  (``recall_at_1_sequence``);
* the operating point fitted at the target precision (default 1.0) by
  `vpr_ros.core.calibration.calibrate_candidates`, which decides every frame with the node's
  `decide`: the full rule (single frame, then sequence and distinctiveness) and, for
  comparison, the single-frame rule alone (``operating_point_single``, the previous rule);
* what the node decides at the point it would run (``at_point``: the model's calibrated point
  unless thresholds are given): precision, recall, the accepted pairs, by rule;
* the precision-recall curve of single-frame best candidates (PNG) with the points marked.

Bags give stamps and two pose streams: the ground truth (``--loop-pose-topic``) for the ground
truth and the odometry (``--loop-odom-topic``, default the same) that the node's keyframe policy
and sequence alignment use. Indexes and folders get stamps ``--rate-hz`` apart (default 1 Hz).
"""
from dataclasses import dataclass, replace
import os
from typing import Any, Optional, Sequence

import numpy as np

from vpr_ros.core.calibration import calibrate_candidates, OperatingPoint, precision_recall
from vpr_ros.core.decision import decide, DecisionRule
from vpr_ros.core.detector import DetectorConfig
from vpr_ros.core.metrics import positives_from_distance
from vpr_ros.core.psi import POSITIVE_PSI
from vpr_ros.core.psi import positives as psi_positives
from vpr_ros.core.tbplaces import image_root, read_index
from vpr_ros.training.eval.embedding import IN_MEMORY, resolve_models
from vpr_ros.training.eval.loop_replay import DEFAULT_RATE_HZ

DEFAULT_TOP_K = DetectorConfig().top_k


@dataclass
class LoopSequence:
    """Frames in the order they were seen, and what their ground truth is made of."""

    paths: list[str]
    poses: Optional[np.ndarray]           # (N, 7) or None
    pairs: Optional[list[set]]            # per frame, the true earlier frames (pair list)
    stamps_s: Optional[np.ndarray]        # (N,) or None: --rate-hz apart
    source: str
    odom: Optional[np.ndarray] = None     # (N, 7) the node's pose input; None: `poses`
    starts: tuple = ()                    # first frame of each input after the first


def _is_bag(path: str) -> bool:
    return (os.path.isdir(path) and os.path.exists(os.path.join(path, 'metadata.yaml'))) or \
        path.endswith(('.bag', '.mcap', '.db3'))


def _odometry(bag: str, topic: str, stamps_ns: np.ndarray) -> np.ndarray:
    """Interpolate a bag's pose topic at the image stamps: the node's pose input (NaN: none)."""
    from vpr_ros.core.pose_buffer import PoseBuffer
    from vpr_ros.sim.writers import read_bag_poses
    t, poses = read_bag_poses(bag, topic)
    if not len(t):
        raise ValueError(f'{bag}: no poses on {topic}')
    buf = PoseBuffer(max_gap_s=0.5, capacity=len(t) + 1)
    for k in np.argsort(t, kind='stable'):
        buf.add(int(t[k]), poses[k, :3], poses[k, 3:])
    out = np.full((len(stamps_ns), 7), np.nan)
    for i, s in enumerate(stamps_ns):
        p = buf.pose_at(int(s))
        if p is not None:
            out[i] = p.vector()
    return out


def read_sequence(inputs: Sequence[str] = (), folder: Optional[str] = None,
                  gt_csv: Optional[str] = None, work_dir: Optional[str] = None,
                  rate_hz: Optional[float] = None, image_topic: Optional[str] = None,
                  pose_topic: Optional[str] = None,
                  odom_topic: Optional[str] = None) -> LoopSequence:
    """
    One sequence from TB-Places indexes and bags (concatenated in order) or a folder pair.

    Bags are extracted (all frames, poses of `pose_topic` interpolated: the ground truth) into
    ``work_dir``; `odom_topic` is what the node would subscribe to (default: `pose_topic`).
    Indexes and folders carry no stamps: they are ``rate_hz`` apart (default 1 Hz).
    """
    rate = float(rate_hz or DEFAULT_RATE_HZ)
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
        return LoopSequence(paths, None, pairs, np.arange(len(paths)) / rate,
                            f'folder {folder} (ref, then query)')
    if not inputs:
        raise ValueError('loop mode needs --loop SEQUENCE... or --loop-folder DIR')
    paths, poses, odom, stamps, offset, starts = [], [], [], [], 0.0, []
    for k, src in enumerate(inputs):
        starts.append(len(paths))
        idx_path, st, od = _one_input(src, k, work_dir, rate, image_topic, pose_topic,
                                      odom_topic)
        idx = read_index(idx_path)
        root = image_root(idx_path, idx.im_prefix)
        paths += [os.path.join(root, p) for p in idx.im_paths]
        poses.append(idx.poses)
        odom.append(idx.poses if od is None else od)
        st = np.asarray(st, np.float64)  # later inputs follow the earlier ones in time
        stamps.append(st - (st[0] if len(st) else 0.0) + offset)
        offset = stamps[-1][-1] + 1e6 if len(st) else offset
    poses_all = np.concatenate(poses).reshape(-1, 7)
    odom_all = np.concatenate(odom).reshape(-1, 7)
    return LoopSequence(paths, poses_all, None, np.concatenate(stamps) if stamps else
                        np.zeros(0), ', '.join(inputs),
                        None if np.array_equal(odom_all, poses_all) else odom_all,
                        tuple(starts[1:]))


def _one_input(src: str, k: int, work_dir: Optional[str], rate: float,
               image_topic: Optional[str], pose_topic: Optional[str],
               odom_topic: Optional[str]) -> tuple[str, np.ndarray, Optional[np.ndarray]]:
    """(index path, stamps in s, odometry poses or None) of an index or a bag."""
    if not _is_bag(src):
        return src, np.arange(len(read_index(src).im_paths)) / rate, None
    from vpr_ros.training.data.extract_bag import extract
    if work_dir is None:  # never write into the current directory
        import tempfile
        work_dir = tempfile.mkdtemp(prefix='vpr_loop_')
    out = os.path.join(work_dir, f'loop_bag_{k}')
    try:
        summary = extract(src, out, image_topic, pose_topic, all_frames=True, progress=False)
    except SystemExit as err:  # the extractor's command-line refusals
        raise ValueError(f'{src}: {err}') from None
    stamps_ns = np.asarray(summary['stamps_ns'], np.int64)
    odom = None
    if odom_topic and odom_topic != summary['pose']:
        odom = _odometry(src, odom_topic, stamps_ns)
    return summary['index'], stamps_ns / 1e9, odom


def earlier_allowed(seq: LoopSequence, exclusion_s: float) -> np.ndarray:
    """Per frame, how many frames before it are outside the exclusion window (in seconds)."""
    # frames j < i with stamp_j < stamp_i - exclusion_s (the map's rule, records.py, is
    # inclusive: |dt| <= exclusion_s is excluded); stamps increase along the sequence
    return np.searchsorted(seq.stamps_s, seq.stamps_s - exclusion_s, side='left')


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


def node_config(verify: bool = True, top_k: int = DEFAULT_TOP_K, gate: bool = True,
                keyframes: bool = True, exclusion_s: Optional[float] = None) -> DetectorConfig:
    """
    Build the node's detector config with the evaluation's options applied.

    `keyframes` False puts every frame into the map (an upper bound of the node's recall).
    """
    c = DetectorConfig()
    c = replace(c, geometric_verification=verify, top_k=top_k, degenerate_gate=gate,
                exclusion_s=c.exclusion_s if exclusion_s is None else float(exclusion_s))
    if not keyframes:
        c = replace(c, kf_max_interval_s=1e-9)  # every frame passes the time criterion
    return c


def _decided(frames, rule: DecisionRule) -> list:
    """Per frame: the accepted candidates with whether each is true ([] when none)."""
    out = []
    for f in frames:
        truth = {c.match_id: ok for c, ok in f}
        out.append([(c, truth[c.match_id]) for c in decide([c for c, _ in f], rule)])
    return out


def _at_point(frames, can_close: np.ndarray, rule: DecisionRule, rep) -> dict:
    """
    Decide every frame as the node at `rule` would.

    Precision and recall of each frame's first accepted candidate, and every accepted (frame,
    map frame) pair, in the node's row order.
    """
    dec = _decided(frames, rule)
    firsts = [d[0] for d in dec if d]
    n_true = sum(1 for _, ok in firsts if ok)
    by: dict[str, int] = {}
    for c, _ in firsts:
        by[c.accepted_by] = by.get(c.accepted_by, 0) + 1
    return {'rule': {'score_threshold': rule.score_threshold, 'min_inliers': rule.min_inliers,
                     'confidence_threshold': rule.confidence_threshold,
                     'confidence_threshold_time': rule.confidence_threshold_time},
            'n_accepted': len(firsts), 'n_false': len(firsts) - n_true,
            'precision': n_true / len(firsts) if firsts else 1.0,
            'recall': n_true / max(1, int(can_close.sum())), 'by_rule': by,
            'pairs': [[i, rep.frame_of.get(c.match_id, -1)] for i, d in enumerate(dec)
                      for c, _ in d]}


def score_replay(rep, positives: list[np.ndarray], target_precision: float, data: dict,
                 node_rule: DecisionRule, verification: bool) -> dict:
    """R@1 (single frame, sequence), fitted points, the node's decisions, PR curve."""
    from vpr_ros.training.eval.loop_replay import labelled, to_json
    frames = labelled(rep, positives)
    kf = rep.keyframes
    can_close = np.array([r is not None and not rep.gated[i]
                          and any(kf[j] for j in positives[i])
                          for i, r in enumerate(rep.results)], bool)
    single = [max((x for x in f if x[0].in_top_k), key=lambda x: x[0].score, default=None)
              for f in frames]
    # the sequence's best-supported candidate (its margin may be withheld in a turn)
    seq = [max((x for x in f if x[0].sequence is not None), key=lambda x: x[0].sequence,
               default=None) for f in frames]
    n_rev = int(can_close.sum())
    r1 = [s is not None and s[1] for s, c in zip(single, can_close) if c]
    r1_seq = [s is not None and s[1] for s, c in zip(seq, can_close) if c]
    point = calibrate_candidates(frames, can_close, target_precision, data, verification,
                                 sequence=True)
    single_point = calibrate_candidates(frames, can_close, target_precision, data,
                                        verification, sequence=False)
    queried = np.array([s is not None for s in single])
    sc = np.array([s[0].score if s is not None else np.nan for s in single])
    ok = np.array([bool(s is not None and s[1]) for s in single])
    prec, rec, thr = precision_recall(sc[queried], ok[queried], can_close[queried])
    return {'n_queries': int(queried.sum()), 'n_revisit': n_rev,
            'n_map': int(kf.sum()), 'gated': int(rep.gated.sum()),
            'recall_at_1': float(np.mean(r1)) if n_rev else float('nan'),
            'recall_at_1_sequence': float(np.mean(r1_seq)) if n_rev else float('nan'),
            'operating_point': point.to_dict(), 'operating_point_single': single_point.to_dict(),
            'at_point': _at_point(frames, can_close, node_rule, rep),
            'pr_curve': {'precision': prec.tolist(), 'recall': rec.tolist(),
                         'threshold': thr.tolist()},
            'frames': to_json(frames), 'can_close': can_close.astype(int).tolist(),
            'replay_seconds': round(rep.seconds, 2)}


def _node_rule(src: str, enc, base: DetectorConfig, image_size,
               point: Optional[OperatingPoint]) -> DecisionRule:
    """Return the rule the node runs for a model: `point`, the model's own point, or the base."""
    from vpr_ros.core.calibration import calibrated_config
    if point is None and src != IN_MEMORY and not src.startswith('<'):
        from vpr_ros.model.operating_point import model_operating_point
        point, _ = model_operating_point(src, tuple(image_size) if image_size else None)
    return calibrated_config(base, point).rule()


def evaluate_loop(inputs: Sequence[str] = (), folder: Optional[str] = None,
                  gt_csv: Optional[str] = None, models: Sequence[Any] = (),
                  include_default: bool = True, hit: str = 'psi',
                  psi_threshold: float = POSITIVE_PSI, fov_deg: float = 90.0,
                  radius: float = 3.5, max_dist: float = 2.0,
                  exclusion_frames: Optional[int] = None,
                  exclusion_s: Optional[float] = None, rate_hz: Optional[float] = None,
                  target_precision: float = 1.0, verify: bool = True,
                  top_k: int = DEFAULT_TOP_K, gate: bool = True, keyframes: bool = True,
                  image_size: Optional[Sequence[int]] = None, out_dir: Optional[str] = None,
                  device: str = 'auto', batch_size: int = 32, progress: bool = True,
                  cache_dir: Optional[str] = None, verbose: bool = True,
                  topics: Optional[tuple] = None, point: Optional[OperatingPoint] = None,
                  sessions: bool = False, overrides: Optional[dict] = None) -> dict:
    """
    Replay the sequence through the node's detector for every model; return the report.

    `topics`: (image, ground-truth pose, odometry) topics of bags, None where the bag has one
    of the kind; odometry 'none' replays a node without a pose topic. `exclusion_frames`: the
    window in frames at `rate_hz` (else `exclusion_s`, else the node's). `point`: decide
    `at_point` there instead of each model's own point.
    `sessions`: each input is a session of its own (the node restarted with `load_map`
    between them: yesterday's map, today's traverse), else one session. `overrides`:
    DetectorConfig fields set as a node parameter would set them (e.g. kf_novelty_threshold).
    `batch_size` and `cache_dir` are accepted for the other modes and unused: each frame gets
    its own forward, as in the node.
    """
    import time

    from vpr_ros.training.eval.loop_replay import evidence_config, replay
    t0 = time.monotonic()
    image_topic, pose_topic, odom_topic = (tuple(topics or ()) + (None,) * 3)[:3]
    # odometry 'none': the node runs without a pose topic (time and novelty keyframes,
    # sequences aligned by time); the poses remain the ground truth
    blind = isinstance(odom_topic, str) and odom_topic.lower() == 'none'
    seq = read_sequence(inputs, folder, gt_csv, out_dir, rate_hz, image_topic, pose_topic,
                        None if blind else odom_topic)
    if exclusion_s is None and exclusion_frames is not None:
        exclusion_s = exclusion_frames / float(rate_hz or DEFAULT_RATE_HZ)
    base = replace(node_config(verify, top_k, gate, keyframes, exclusion_s), **(overrides or {}))
    allowed = earlier_allowed(seq, base.exclusion_s)
    positives = loop_positives(seq, allowed, hit, psi_threshold, fov_deg, radius, max_dist)
    gt = ({'rule': 'pairs', 'csv': gt_csv or os.path.join(folder, 'ground_truth.csv')}
          if folder else {'rule': hit, **({'threshold': psi_threshold, 'fov_deg': fov_deg,
                                           'radius_m': radius} if hit == 'psi'
                                          else {'max_dist_m': max_dist})})
    data = {'name': os.path.basename(os.path.normpath(folder)) + ' as a loop' if folder
            else ', '.join(os.path.relpath(p, os.path.dirname(os.path.dirname(
                os.path.abspath(p)))) for p in inputs),
            'source': seq.source, 'n_frames': len(seq.paths), 'ground_truth': gt,
            'exclusion': {'seconds': base.exclusion_s}, 'gate': gate,
            'map': 'node keyframes (KeyframePolicy defaults)' if keyframes else 'every frame',
            'sessions': 'one per input (load_map between)' if sessions else 'one',
            **({'node_pose_input': 'none (keyframes by time and novelty)'} if blind else {}),
            'replay': 'vpr_ros.core.detector.LoopDetector (training/eval/loop_replay.py)'}
    stamps_ns = np.round(seq.stamps_s * 1e9).astype(np.int64)
    odom = None if blind else seq.odom if seq.odom is not None else seq.poses
    rows, reps = [], []
    for name, src, enc in resolve_models(models, include_default, device, image_size):
        fp = str(getattr(enc, 'fingerprint', '') or '')
        rep = replay(seq.paths, stamps_ns, odom, enc, evidence_config(base), f'{name} loop',
                     progress, seq.starts if sessions else ())
        reps.append(rep)
        row = score_replay(rep, positives, target_precision,
                           {**data, 'model': src or 'built-in default', 'fingerprint': fp},
                           _node_rule(src, enc, base, image_size, point), verify)
        rows.append({'name': name, 'model': src, 'fingerprint': fp, **row})
    report = {'mode': 'loop', 'dataset': {**data, 'gated': int(reps[0].gated.sum()) if reps
                                          else 0, 'gate_reasons': {},
                                          'unreadable': reps[0].unreadable if reps else 0},
              'target_precision': target_precision,
              'image_size': list(image_size) if image_size else None,
              'rows': rows, 'seconds': round(time.monotonic() - t0, 2)}
    from vpr_ros.training.eval.loop_report import format_loop_table, write_loop_report
    if out_dir:
        report['files'] = write_loop_report(report, out_dir)
    if verbose:
        print(format_loop_table(report))
    return report


def best_operating_point(report: dict, row: int = 0, sequence: bool = True) -> OperatingPoint:
    """Return one report row's fitted point (full rule, or the single-frame rule alone)."""
    r = report['rows'][row]
    return OperatingPoint.from_dict(r['operating_point' if sequence
                                      else 'operating_point_single'])


def calibrate_jointly(reports: Sequence[dict], row: int = 0, target_precision: float = 1.0,
                      name: str = '', sequence: bool = True) -> OperatingPoint:
    """
    One operating point over several loop reports (e.g. the demo loop and the corridor).

    The point must hold on every set at once, so their replayed frames are pooled and decided
    together by `calibrate_candidates`; `data` names each set with the recall and the false
    acceptances the joint point has there.
    """
    from vpr_ros.training.eval.loop_replay import from_json
    parts = [(from_json(rep['rows'][row]['frames']),
              np.asarray(rep['rows'][row]['can_close'], bool)) for rep in reports]
    sets = [{k: rep['dataset'][k] for k in ('name', 'source', 'n_frames', 'ground_truth',
                                            'exclusion', 'node_pose_input')
             if k in rep['dataset']} for rep in reports]
    first = reports[0]['rows'][row]
    verification = OperatingPoint.from_dict(first['operating_point']).min_inliers is not None
    point = calibrate_candidates(
        [f for p in parts for f in p[0]], np.concatenate([p[1] for p in parts]),
        target_precision, {'name': name or ' + '.join(s['name'] for s in sets), 'sets': sets,
                           'verification': 'orb' if verification else None,
                           'model': first.get('model') or 'built-in default',
                           'fingerprint': first.get('fingerprint', ''),
                           'image_size': reports[0].get('image_size')},
        verification, sequence)
    for s, (frames, can) in zip(sets, parts):
        firsts = [d[0] for d in _decided(frames, point.rule()) if d]
        s['recall'] = sum(1 for _, ok in firsts if ok) / max(1, int(can.sum()))
        s['false_accepted'] = sum(1 for _, ok in firsts if not ok)
    return point
