"""
A recorded sequence played through the node's own loop detector, frame by frame.

The loop evaluation and the calibration must decide what the node decides, so they do not
re-implement it: `replay` feeds the frames in order to `vpr_ros.core.detector.LoopDetector` (its
map, keyframe policy, degenerate gate, verifier and sequence evidence), with the stamps and
poses the node would get, one forward per frame as the node runs with `max_batch` 1. It runs
with a permissive rule (`evidence_config`): every candidate the search returns is verified and
every frame gets its sequence evidence, so the frames can then be decided at any operating
point with `vpr_ros.core.decision.decide`, exactly as the node at that point would (the
thresholds change which candidates the node verifies, never a verification's outcome).

`labelled` pairs each candidate with whether its keyframe is a true match of the frame; that,
the frame's `can_close` and the rule are all the calibration needs, also across several
sequences (`to_json` / `from_json` keep them in the report).
"""
from dataclasses import dataclass, replace
import math
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from vpr_ros.core.decision import Candidate
from vpr_ros.core.detector import DetectorConfig, FrameResult, LoopDetector
from vpr_ros.core.pose_buffer import Pose
from vpr_ros.map.place_map import PlaceMap
from vpr_ros.training.eval.embedding import read_rgb

# Stamps of frames that carry none (TB-Places indexes, folder pairs): 1 s apart, as the node's
# keyframe interval and exclusion window were measured for.
DEFAULT_RATE_HZ = 1.0


def evidence_config(config: DetectorConfig) -> DetectorConfig:
    """
    Return the node's config with a replay's permissive rule: evidence for every candidate.

    Score threshold -1, verification from one inlier, the sequence rule at any margin, every
    candidate verified (`record_evidence`). The keyframe policy, exclusion, gate, top_k and
    verifier settings stay the node's, so the map and the evidence are the node's. Temporal
    consistency depends on what was accepted before, so a replay refuses it.
    """
    if config.temporal_consistency > 1:
        raise ValueError('temporal_consistency > 1 depends on earlier acceptances: a replay '
                         'cannot decide it at other thresholds')
    return replace(config, score_threshold=-1.0, gv_min_inliers=1, sequence_evidence=True,
                   confidence_threshold=-math.inf, gv_first_only=False, record_evidence=True)


@dataclass
class Replay:
    """What the detector made of each frame, and which frame each map keyframe is."""

    results: list[Optional[FrameResult]]   # None: the image could not be read
    frame_of: dict[int, int]               # map keyframe id -> frame index
    unreadable: int
    seconds: float

    @property
    def gated(self) -> np.ndarray:
        return np.array([r is not None and r.keyframe_reason.startswith('degenerate')
                         for r in self.results])

    @property
    def keyframes(self) -> np.ndarray:
        return np.array([r is not None and r.is_keyframe for r in self.results])


def replay(paths: Sequence[str], stamps_ns: np.ndarray, poses: Optional[np.ndarray], encoder,
           config: DetectorConfig, desc: str = 'replay', progress: bool = True,
           session_starts: Sequence[int] = ()) -> Replay:
    """
    Play image files through a LoopDetector on a map of its own, as the node would.

    `poses` (N, 7) are the node's pose input at each stamp (odometry), None: no pose topic.
    An unreadable file is skipped and counted (the node never sees that frame). At each frame
    index in `session_starts` the node is restarted on its saved map (`load_map`): a new
    session, a new detector, the map of the earlier sessions loaded as the node loads it.
    """
    import tempfile
    import time
    t0 = time.monotonic()
    results: list[Optional[FrameResult]] = []
    frame_of: dict[int, int] = {}
    unreadable = 0
    starts = set(int(k) for k in session_starts if int(k) > 0)
    with tempfile.TemporaryDirectory(prefix='vpr_replay_') as map_dir:
        place_map = PlaceMap(encoder.dim, encoder.fingerprint)
        det = LoopDetector(encoder, place_map, config)
        for i in tqdm(range(len(paths)), desc=desc, disable=not progress, unit='frame'):
            if i in starts:  # the node stops (map saved) and starts again on it
                place_map.save(map_dir)
                place_map.close()
                place_map = PlaceMap.load(map_dir, encoder.fingerprint, encoder.dim)
                det = LoopDetector(encoder, place_map, config)
            try:
                img = read_rgb(paths[i])
            except (OSError, ValueError):
                results.append(None)
                unreadable += 1
                continue
            t = int(stamps_ns[i])
            pose = None
            if poses is not None and np.all(np.isfinite(poses[i])):
                pose = Pose.from_vector(t, poses[i])
            vec = encoder.embed([img], 'rgb8')[0]  # embed_one's forward (any `embed` encoder)
            res = det.process(img, t, 'rgb8', pose, 'map' if pose is not None else '',
                              descriptor=vec)
            if res.is_keyframe:
                frame_of[res.query_id] = i
            results.append(res)
        place_map.close()
    return Replay(results, frame_of, unreadable, time.monotonic() - t0)


def labelled(rep: Replay, positives: Sequence[np.ndarray]) -> list[list[tuple[Candidate, bool]]]:
    """Per frame, its considered candidates with whether each is a true match."""
    out = []
    for i, r in enumerate(rep.results):
        true = set(int(j) for j in positives[i])
        cands = [] if r is None else r.considered
        out.append([(c, rep.frame_of.get(c.match_id, -1) in true) for c in cands])
    return out


_KEYS = ('match_id', 'match_stamp_ns', 'score', 'inliers', 'verified', 'veto', 'sequence',
         'margin', 'in_top_k')


def to_json(frames: Sequence[Sequence[tuple[Candidate, bool]]]) -> list:
    """Frames' labelled evidence as plain lists (floats rounded to 6 places)."""
    def val(v):
        if isinstance(v, float):
            return None if not math.isfinite(v) else round(v, 6)
        return v
    return [[[val(getattr(c, k)) for k in _KEYS] + [bool(ok)] for c, ok in f] for f in frames]


def from_json(data: list) -> list[list[tuple[Candidate, bool]]]:
    """Inverse of `to_json` (no poses, no relative poses: the decision does not use them)."""
    frames = []
    for f in data:
        frame = []
        for row in f:
            v = dict(zip(_KEYS, row[:-1]))
            frame.append((Candidate(int(v['match_id']), int(v['match_stamp_ns']),
                                    float(v['score']), int(v['inliers']), None,
                                    verified=v['verified'], veto=bool(v['veto']),
                                    sequence=v['sequence'], margin=v['margin'],
                                    in_top_k=bool(v['in_top_k'])), bool(row[-1])))
        frames.append(frame)
    return frames
