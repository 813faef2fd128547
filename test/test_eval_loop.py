"""vpr-eval loop mode: a sequence queried against its own past, calibrated operating point."""
from dataclasses import replace
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import make_sequence  # noqa: E402

from vpr_ros.core.calibration import OperatingPoint  # noqa: E402
from vpr_ros.core.tbplaces import write_index  # noqa: E402
from vpr_ros.training.eval.loop_cli import detector_overrides  # noqa: E402
from vpr_ros.training.eval.loop_mode import (  # noqa: E402
    best_operating_point,
    earlier_allowed,
    evaluate_loop,
    loop_positives,
    LoopSequence,
)


class RawPixels:
    """A real, weak place descriptor (normalised 24x32 gray pixels): fast, no torch."""

    fingerprint = 'rawpix-24x32'
    dim = 24 * 32

    def embed(self, images, encoding='rgb8'):
        out = []
        for img in images:
            g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 24),
                           interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
            g -= g.mean()
            out.append(g / max(np.linalg.norm(g), 1e-6))
        return np.stack(out)


def _line_poses(xs, yaw=0.0):
    q = [0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)]
    return np.array([[x, 0.0, 0.0, *q] for x in xs])


def test_exclusion_window_and_ground_truth_by_hand():
    # 0..4 drive +x, 5..7 somewhere else, 8..9 come back to x = 0 and 1; 1 s per frame
    poses = _line_poses([0, 1, 2, 3, 4, 20, 30, 40, 0.1, 1.1])
    seq = LoopSequence([f'{i}.png' for i in range(10)], poses, None, np.arange(10.0), 'hand')
    allowed = earlier_allowed(seq, 2.5)  # frames older than i - 2.5 s
    assert allowed.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    pos = loop_positives(seq, allowed, 'distance', max_dist=0.5)
    assert [p.tolist() for p in pos] == [[], [], [], [], [], [], [], [], [0], [1]]
    # a pair list (folder pair) is taken as given, then cut by the window
    seq = LoopSequence(['a'] * 6, None, [set(), set(), set(), {0}, {1, 4}, {0}],
                       np.arange(6.0), 'pairs')
    pos = loop_positives(seq, earlier_allowed(seq, 1.5))
    assert [p.tolist() for p in pos] == [[], [], [], [0], [1], [0]]


@pytest.fixture(scope='module')
def revisit_index(tmp_path_factory):
    """Write the photo-wall sequence (first pass, way back, revisit) as a TB-Places folder."""
    seq = make_sequence()
    root = tmp_path_factory.mktemp('loopseq')
    names = []
    for i, f in enumerate(seq.frames):
        names.append(f'{i:04d}.png')
        cv2.imwrite(str(root / names[-1]), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return write_index(str(root / 'seq.json'), '', names, seq.poses), seq


def test_loop_report_on_a_revisiting_sequence(revisit_index, tmp_path):
    index, seq = revisit_index
    report = evaluate_loop([index], models=[('rawpix', RawPixels())], include_default=False,
                           hit='distance', max_dist=0.3, exclusion_frames=20, keyframes=False,
                           out_dir=str(tmp_path), progress=False, verbose=False)
    row = report['rows'][0]
    n_rev = sum(1 for i in seq.revisits if i >= 20)
    assert row['n_revisit'] >= n_rev - 2 and row['n_revisit'] > 5
    assert report['dataset']['gated'] == 0
    # every frame is in the map; frame 21 is the first with one outside the 20 s window
    assert row['n_map'] == len(seq) and row['n_queries'] == len(seq) - 21
    assert row['recall_at_1'] > 0.5
    op = OperatingPoint.from_dict(row['operating_point'])
    assert op.precision == 1.0 and op.data['n_false'] == 0
    assert op.data['fingerprint'] == 'rawpix-24x32' and op.data['ground_truth']['rule'] == \
        'distance'
    single = best_operating_point(report, sequence=False)
    assert single.min_inliers is not None and single.precision == 1.0
    assert single.confidence_threshold is None and single.confidence_threshold_time is None
    # the index has poses: every history is aligned by distance, so only that margin is fitted
    assert op.confidence_threshold is not None and op.confidence_threshold_time is None
    assert op.recall >= single.recall  # the sequence rule only adds to the single-frame rule
    saved = json.load(open(report['files']['json']))
    assert saved['rows'][0]['operating_point'] == row['operating_point']
    assert os.path.getsize(report['files']['pr_png']) > 1000


def test_vpr_eval_loop_cli_on_the_corridor_at_its_own_size(corridor_dir, tmp_path):
    """The real corridor as a loop (ref, then query), default model at 120x160, not 224x224."""
    out = tmp_path / 'loop'
    proc = subprocess.run([sys.executable, '-m', 'vpr_ros.training.eval.evaluate', '--loop-folder',
                           corridor_dir, '--image-size', '120', '160', '--no-progress',
                           '--out', str(out)], env=os.environ.copy(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    print(proc.stdout)
    report = json.load(open(out / 'loop_results.json'))
    row = report['rows'][0]
    assert report['image_size'] == [120, 160] and row['fingerprint'].endswith('@120x160')
    assert row['n_revisit'] == 111 and report['dataset']['gated'] == 0
    assert row['recall_at_1'] > 0.3
    op = OperatingPoint.from_dict(row['operating_point'])
    assert op.precision == 1.0 and 'corridor as a loop' in op.data['name']
    assert (out / 'loop_precision_recall.png').exists()


def test_export_stores_the_calibrated_operating_point(tmp_path):
    """vpr-export --calibrate-loop: the point travels in the model file and the node reads it."""
    from synthetic import make_synthetic_garden

    from vpr_ros.model.model_file import load_model
    from vpr_ros.model.operating_point import model_operating_point, PROVENANCE_KEY
    from vpr_ros.training.fit.train import main as train_main
    from vpr_ros.training.ship.export import main as export_main
    root = str(tmp_path / 'garden')
    idx = make_synthetic_garden(root)
    out = str(tmp_path / 'run')
    assert train_main(['--data-root', root, '--train-map', 'train_map', '--train-query',
                       'train_query', '--image-size', '64', '64', '--workers', '0',
                       '--no-progress', '--epochs', '1', '--batch-size', '16',
                       '--pairs-per-epoch', '32', '--out', out]) == 0
    path = str(tmp_path / 'model.pt')
    # validation loop: the val map traverse, then the val query traverse over the same places
    assert export_main([out, '--out', path, '--calibrate-loop', idx['val_map'],
                        idx['val_query'], '--calibrate-exclusion-frames', '10',
                        '--calibrate-verify', '--calibrate-loop-no-pose-too']) == 0
    _, prov = load_model(path)
    point = OperatingPoint.from_dict(prov[PROVENANCE_KEY])
    assert point.precision == 1.0 and point.target_precision == 1.0
    assert point.data['sets'][0]['n_frames'] > 100 and point.data['verification'] == 'orb'
    # the loop replayed twice: with its poses, and as a node without a pose topic
    assert len(point.data['sets']) == 2 and 'node_pose_input' not in point.data['sets'][0]
    assert point.data['sets'][1]['node_pose_input'].startswith('none')
    got, why = model_operating_point(path)
    assert why == '' and got == point or (not point.usable and got is None)
    assert model_operating_point(path, (32, 32))[0] is None  # fitted at another input size


def test_the_replay_keeps_the_node_keyframes(tmp_path):
    """With poses: every 1 m (0.25 m per frame -> every 4th); without: 1 s or novelty."""
    from vpr_ros.core.detector import DetectorConfig
    from vpr_ros.training.eval.loop_replay import evidence_config, replay
    img = make_sequence().frames[0]
    paths = []
    for i in range(20):
        paths.append(str(tmp_path / f'{i:02d}.png'))
        cv2.imwrite(paths[-1], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    config = evidence_config(DetectorConfig())
    stamps = (np.arange(20) * 0.5e9).astype(np.int64)
    rep = replay(paths, stamps, _line_poses(np.arange(20) * 0.25), RawPixels(), config,
                 progress=False)
    assert np.flatnonzero(rep.keyframes).tolist() == [0, 4, 8, 12, 16]
    # no poses, one image again and again (4 Hz): a camera standing still keys at the 5 s
    # interval only; without that guard, at the interval without a pose (1 s)
    rep = replay(paths, (np.arange(20) * 0.25e9).astype(np.int64), None, RawPixels(), config,
                 progress=False)
    assert np.flatnonzero(rep.keyframes).tolist() == [0]
    rep = replay(paths, (np.arange(20) * 0.25e9).astype(np.int64), None, RawPixels(),
                 replace(config, kf_still_similarity=0.0), progress=False)
    assert np.flatnonzero(rep.keyframes).tolist() == [0, 4, 8, 12, 16]
    other = make_sequence().frames[-1]  # a novel view becomes a keyframe at once
    cv2.imwrite(paths[7], cv2.cvtColor(other, cv2.COLOR_RGB2BGR))
    rep = replay(paths, (np.arange(20) * 0.25e9).astype(np.int64), None, RawPixels(), config,
                 progress=False)
    kept = np.flatnonzero(rep.keyframes).tolist()
    assert 7 in kept and 5 not in kept and 6 not in kept
    assert rep.frame_of == {r.query_id: i for i, r in enumerate(rep.results) if r.is_keyframe}


def test_loop_mode_reads_a_rosbag_with_its_stamps(tmp_path):
    """The demo's simulated bag: frames and poses extracted, exclusion in seconds by stamps."""
    code = ('from vpr_ros.sim.dataset import default_dataset; '
            'p = default_dataset(log=lambda *a, **k: None); '
            "print(p.bags[p.names.index('day_loop')])")
    proc = subprocess.run([sys.executable, '-c', code], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bag = proc.stdout.strip().splitlines()[-1]
    from vpr_ros.sim.writers import GT_TOPIC
    with pytest.raises(ValueError, match='pose topic'):  # odometry and ground truth: say which
        evaluate_loop([bag], models=[('rawpix', RawPixels())], include_default=False,
                      out_dir=str(tmp_path / 'x'), progress=False, verbose=False)
    report = evaluate_loop([bag], models=[('rawpix', RawPixels())], include_default=False,
                           exclusion_s=30.0, keyframes=True, out_dir=str(tmp_path),
                           progress=False, verbose=False, topics=(None, GT_TOPIC))
    ds, row = report['dataset'], report['rows'][0]
    assert ds['n_frames'] == 313 and ds['exclusion'] == {'seconds': 30.0}
    assert ds['map'].startswith('node keyframes') and 40 < row['n_map'] < 120
    assert row['n_revisit'] > 20 and OperatingPoint.from_dict(row['operating_point']).precision \
        == 1.0
    # odometry 'none': the node without a pose topic, ground truth still from the poses
    blind = evaluate_loop([bag], models=[('rawpix', RawPixels())], include_default=False,
                          exclusion_s=30.0, out_dir=str(tmp_path / 'blind'), progress=False,
                          verbose=False, topics=(None, GT_TOPIC, 'none'))
    brow = blind['rows'][0]
    assert blind['dataset']['node_pose_input'].startswith('none')
    assert brow['n_map'] != row['n_map'] and brow['n_revisit'] > 0
    aligned = {c[9] for frame in brow['frames'] for c in frame if c[9]}
    assert 'distance' not in aligned and {c[9] for frame in row['frames'] for c in frame
                                          if c[9]} <= {'distance'}


def test_detector_fields_from_the_command_line_are_typed_by_their_defaults():
    assert detector_overrides(['gv_clahe_clip=4', 'top_k=3', 'gv_first_only=true']) == {
        'gv_clahe_clip': 4.0, 'top_k': 3, 'gv_first_only': True}
    for bad in (['nosuch=1'], ['top_k'], ['top_k=3.5'], ['gv_first_only=yes']):
        with pytest.raises(SystemExit):
            detector_overrides(bad)
