"""vpr-cross-session: a day map played into one node, a session into a second node loading it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vpr_ros.tools.cross_session import main, score_session


def test_a_session_is_scored_against_the_day_keyframes(tmp_path, monkeypatch):
    """Day keyframes and session frames in one ground truth: what counts and what is right."""
    from vpr_ros.tools import cross_session
    from vpr_ros.tools.loop_eval import GroundTruth

    day_ns = np.arange(20, dtype=np.int64) * 10**9                 # x = 0..19 m, heading +x
    day = np.zeros((20, 7))
    day[:, 0], day[:, 6] = np.arange(20.0), 1.0
    session_ns = 86400 * 10**9 + np.arange(10, dtype=np.int64) * 10**9
    session = np.zeros((10, 7))
    session[:, 0], session[:, 1], session[:, 6] = np.arange(10.0) + 0.2, 0.1, 1.0
    monkeypatch.setattr('vpr_ros.sim.writers.read_bag_poses', lambda bag, topic: (session_ns,
                                                                                  session))
    keyframes = day_ns[::2]                                        # every other day frame
    status = np.zeros((10, 7))
    status[:, 0] = session_ns / 1e9
    rows = np.array([[session_ns[k] / 1e9, day_ns[k] / 1e9, 0.9, 0, -1] for k in (2, 4)]
                    + [[session_ns[6] / 1e9, day_ns[18] / 1e9, 0.95, 9, -1]])  # 12 m away
    result = {'rows': rows, 'status': status, 'frames_published': 10, 'exit_code': 0,
              'map_keyframes_at_start': 10}
    out = score_session(GroundTruth(day_ns, day), keyframes, 'bag', result, 30.0,
                        str(tmp_path / 'r.png'), 'test')
    assert out['n_possible'] == 10 and out['n_published'] == 3
    assert out['n_best_correct'] == 2 and out['precision_best'] == pytest.approx(2 / 3)
    assert out['recall'] == pytest.approx(0.2)
    assert out['best_to_day_map'] == 3 and out['best_within_session'] == 0
    assert (tmp_path / 'r.png').stat().st_size > 10_000
    assert cross_session._json_safe({'a': [float('nan'), 1.0]}) == {'a': [None, 1.0]}


def test_param_needs_name_and_value(capsys):
    assert main(['--param', 'score_threshold=0.5']) == 2
    assert 'NAME:=VALUE' in capsys.readouterr().err


@pytest.mark.ros
@pytest.mark.slow
def test_day_map_then_a_fog_session_over_dds(tmp_path):
    """Through the node: the session's node loads the day map and closes loops to it."""
    out = tmp_path / 'cs'
    params = ['geometric_verification:=false', 'score_threshold:=0.5']  # loops in 40 frames
    cmd = [sys.executable, '-m', 'vpr_ros.tools.cross_session', '--sessions', 'fog',
           '--max-frames', '40', '--out', str(out)]
    for p in params:
        cmd += ['--param', p]
    proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / 'cross_session_summary.json').read_text())
    day, fog = summary['day_map'], summary['sessions']['fog']
    assert summary['node_params'] == params
    assert day['node_exit_code'] == 0 and day['frames_processed'] == 40 and day['keyframes'] > 3
    assert fog['node_exit_code'] == 0
    assert fog['frames_processed'] == fog['frames_published'] == 40
    assert fog['map_keyframes_at_start'] == day['keyframes']    # load_map:=true loaded it
    assert fog['n_possible'] >= 30                              # the same path, jittered
    assert fog['best_to_day_map'] > 0 and fog['n_best_correct'] > 0
    log = (out / 'vpr_node_fog.log').read_text()
    assert 'operating point: score_threshold 0.5000' in log      # --param reached it
    assert 'score_threshold set explicitly' in log
    assert (out / 'cross_session.png').stat().st_size > 10_000
    assert (out / 'cross_session_fog.png').stat().st_size > 10_000
    assert 'fog' in proc.stdout and 'possible' in proc.stdout


@pytest.mark.ros
@pytest.mark.slow
def test_without_a_pose_topic_over_dds(tmp_path):
    """A camera alone: keyframes by time (one a second) and novelty, the day map still found."""
    out = tmp_path / 'cs'
    cmd = [sys.executable, '-m', 'vpr_ros.tools.cross_session', '--sessions', 'fog',
           '--max-frames', '40', '--no-pose', '--out', str(out),
           '--param', 'geometric_verification:=false', '--param', 'score_threshold:=0.5']
    proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / 'cross_session_summary.json').read_text())
    day, fog = summary['day_map'], summary['sessions']['fog']
    assert summary['pose_input'] == 'none'
    # 40 frames at 5 Hz are 8 s: a keyframe each second at least, with no pose to say "moved"
    assert day['frames_processed'] == 40 and day['keyframes'] >= 8
    assert fog['frames_processed'] == fog['frames_published'] == 40
    assert fog['map_keyframes_at_start'] == day['keyframes']
    assert fog['best_to_day_map'] > 0 and fog['n_best_correct'] > 0
    assert 'poses none on' in (out / 'vpr_node_fog.log').read_text()  # no pose subscription


@pytest.mark.ros
@pytest.mark.slow
def test_cumulative_sessions_continue_the_map_night_after_night(tmp_path):
    """--cumulative: the second night starts on the day map plus the first night's keyframes."""
    out = tmp_path / 'cs'
    cmd = [sys.executable, '-m', 'vpr_ros.tools.cross_session', '--sessions', 'night',
           'night,name=night2', '--max-frames', '40', '--cumulative', '--out', str(out)]
    proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / 'cross_session_summary.json').read_text())
    day = summary['day_map']
    night, night2 = summary['sessions']['night'], summary['sessions']['night,name=night2']
    assert summary['cumulative'] is True
    assert night['map_keyframes_at_start'] == day['keyframes']
    assert night['keyframes_added'] > 0
    assert night2['map_keyframes_at_start'] == day['keyframes'] + night['keyframes_added']
    # at the shipped defaults: the second night finds the first night's places
    assert night2['best_to_day_map'] > 0 and night2['n_best_correct'] > 0
    assert 'against the day map and earlier sessions' in proc.stdout
