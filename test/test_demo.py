"""`make demo` end to end: simulated garden bag → vpr_node over DDS → scored loop closures."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# Floor for the precision of the best candidate per query against ground truth (ψ > 0.5).
# Chance level is the fraction of processed frames that can close a loop at all: 54 of 313
# (0.17) on the default garden loop. The default model with the shipped threshold (0.8) and a
# 30 s exclusion window measured 0.33 precision, recall 1.0 and AP 1.0 (every correct closure
# outscores every false one: the threshold, not the ranking, lets the false ones through).
# 0.25 is well above chance and below the measured value, so a broken pipeline fails it.
PRECISION_FLOOR = 0.25


def test_demo_publishes_correct_loop_closures(tmp_path) -> None:
    out = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, '-m', 'vpr_ros.demo', '--out', str(out)],
                          env=os.environ.copy(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / 'demo_summary.json').read_text())
    assert summary['node_exit_code'] == 0 and summary['map_saved']
    assert summary['frames_processed'] == summary['frames_published'] > 100
    assert summary['queries_with_loop_closures'] > 0
    assert summary['precision_best'] >= PRECISION_FLOOR, summary
    assert summary['recall'] > 0.0
    assert (out / 'demo_report.png').stat().st_size > 10_000
