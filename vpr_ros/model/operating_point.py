"""
The calibrated operating point a model carries: what score (and inlier) threshold to run it at.

A score threshold means nothing without the model it was measured with: the built-in ImageNet
model scores unrelated places at 0.55-0.77, a trained and whitened one spreads scores
differently. So the threshold that reaches precision 1.0 on validation loops travels with the
model: `vpr-export --calibrate-loop` stores it in the model file's provenance under
``operating_point`` (`vpr_ros.core.calibration.OperatingPoint.to_dict`, with the data it was
fitted on), and the built-in default ships its own below. The node uses it unless the user set
`score_threshold` / `gv_min_inliers` (vpr_ros/ros/detector_config.py) and logs which one.

The built-in point was fitted with ``vpr-eval --loop`` (training/eval/loop_mode.py,
`calibrate_jointly`, a replay of the node's detector) on six loops at once: the simulated demo
loop, the real corridor played as a loop, and a day map with a dusk, night, fog and winter
session in a calibration garden (not the benchmark's), so the shipped thresholds keep
precision 1.0 on all of them.
"""
import copy

from vpr_ros.core.calibration import OperatingPoint
from vpr_ros.core.errors import ModelFileError, VPRError

PROVENANCE_KEY = 'operating_point'

# Fitted 2026-12-06 by training.eval.loop_mode.calibrate_jointly on six loop reports of the
# built-in model (MobileNetV2 + GeM, 224x224, ORB verification, top-5), each a replay of the
# node's own detector (training/eval/loop_replay.py) decided by core.decision.decide:
#   vpr-eval --loop <sim>/day_loop --loop-pose-topic /ground_truth/pose \
#            --loop-odom-topic /odom --out demo_loop
#   vpr-eval --loop-folder ../shared/data/corridor --rate-hz 1 --out corridor_loop
#   vpr-eval --loop <cal>/day_map <cal>/SESSION --sessions --loop-pose-topic /ground_truth/pose \
#            --loop-odom-topic /odom      (SESSION: dusk, night, fog, winter)
# where <cal> is the cross-session set rendered in a second garden (seed 1,
# cross_session_dataset(seed=1)): the benchmark's garden (seed 0) is never fitted on, so its
# figures in the README are held out. Pooled: 2,519 frames, 1,137 could close a loop; 449
# accepted, none false. The single-frame rule moved from (0.9231, 14) to (0.9282, 9): a winter
# look-alike in the calibration garden reached 0.9231 with 14 inliers. The sequence rule's
# margins: 0.1155 with a history aligned by distance (0.2162 before the margin was withheld
# through turns, core/sequence.py: a fog stretch in a turn, where the sequence matched the
# keyframe a metre before the right one, set it), 0.2571 aligned by time (the corridor's
# look-alike stretches, no poses).
BUILTIN_OPERATING_POINT: dict = {
    'score_threshold': 0.928173, 'min_inliers': 9, 'confidence_threshold': 0.1155145,
    'confidence_threshold_time': 0.2570635,
    'target_precision': 1.0, 'precision': 1.0, 'recall': 0.3949, 'n_queries': 2519,
    'data': {
        'name': 'simulated demo loop + real corridor as a loop + calibration garden sessions',
        'model': 'built-in default', 'image_size': None,
        'verification': 'orb 500, frames enlarged/shrunk to 320 px, top-5',
        'fingerprint': 'builtin:mobilenet_v2-gem3-224x224:b0353104',
        'n_possible': 1137, 'n_accepted': 449, 'n_false': 0, 'map': 'node keyframes',
        'sets': [
            {'name': 'simulated demo loop', 'source': 'vpr_ros.sim.dataset.default_dataset() '
             'day_loop (313 frames, 5 Hz)', 'ground_truth': 'psi > 0.5 (90 deg, 3.5 m)',
             'exclusion': '30 s', 'recall': 1.0, 'false_accepted': 0},
            {'name': 'real corridor as a loop', 'source': '../shared/data/corridor ref then '
             'query (222 frames, Milford 2013)', 'ground_truth': 'ground_truth.csv pairs',
             'exclusion': '30 s at 1 frame/s', 'recall': 0.1532, 'false_accepted': 0},
        ] + [
            {'name': f'calibration garden: day map, then {session}',
             'source': 'vpr_ros.sim.dataset.cross_session_dataset(seed=1) (248 + 248 frames, '
             '5 Hz, two sessions)', 'ground_truth': 'psi > 0.5 (90 deg, 3.5 m)',
             'exclusion': '30 s', 'recall': recall, 'false_accepted': 0}
            for session, recall in (('dusk', 0.5044), ('night', 0.0887), ('fog', 0.4234),
                                    ('winter', 0.5484))
        ],
        'fitted': '2026-12-06, training.eval.loop_mode.calibrate_jointly (node replay)',
    },
}


def builtin_operating_point() -> OperatingPoint | None:
    """Return the built-in model's calibrated point (None until one is recorded above)."""
    if not BUILTIN_OPERATING_POINT:
        return None
    return OperatingPoint.from_dict(copy.deepcopy(BUILTIN_OPERATING_POINT))


def from_provenance(provenance: dict) -> OperatingPoint | None:
    """Return the point in a model file's provenance; None when it has none (older files)."""
    raw = (provenance or {}).get(PROVENANCE_KEY)
    if raw is None:
        return None
    try:
        return OperatingPoint.from_dict(raw)
    except VPRError as err:
        raise ModelFileError(f'provenance {PROVENANCE_KEY!r}: {err}') from None


def model_operating_point(model_path: str, image_size=None) -> tuple[OperatingPoint | None,
                                                                     str]:
    """
    (point, '') for a model ('' = built-in), or (None, why there is none).

    A point fitted at one input size says nothing about another (`image_size` other than the
    model's own, or the one the point names), so it is not used then.
    """
    if model_path:
        from vpr_ros.model.model_file import load_model_and_fingerprint
        _, provenance, _ = load_model_and_fingerprint(model_path)
        point = from_provenance(provenance)
        if point is None:
            return None, f'{model_path} carries no calibrated operating point'
    else:
        point = builtin_operating_point()
        if point is None:
            return None, 'no calibrated operating point recorded for the built-in model'
    fitted = point.data.get('image_size')
    if image_size is not None and list(image_size) != list(fitted or []):
        return None, (f'the calibrated point was fitted at image size '
                      f'{fitted or "the model default"}, not {list(image_size)}')
    if not point.usable:
        return None, 'the calibrated point accepts nothing (recall 0 on its data)'
    return point, ''
