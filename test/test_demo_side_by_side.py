"""`make demo` shows the built-in and the shipped GCL model side by side on the same bag."""
import json
import os
import subprocess
import sys

import pytest

from vpr_ros.model.operating_point import model_operating_point
from vpr_ros.tools.demo import node_command, parse_args
from vpr_ros.tools.demo_compare import format_table, second_model


def test_which_models_run() -> None:
    assert second_model('', 'gcl_garden') == 'gcl_garden'
    assert second_model('gcl_garden', 'gcl_garden') == ''  # MODEL=gcl_garden: beside the built-in
    assert second_model('/m/model.pt', 'gcl_garden') == 'gcl_garden'
    assert second_model('', 'none') is None and second_model('', '') is None


def test_shipped_name_reaches_the_node_as_a_name() -> None:
    assert 'model_path:=gcl_garden' in node_command(parse_args(['--model', 'gcl_garden']), '/m')
    cmd = node_command(parse_args(['--model', 'rel/model.pt']), '/m')
    assert f'model_path:={os.path.abspath("rel/model.pt")}' in cmd


def test_table_shows_the_point_in_use() -> None:
    table = format_table([('a', {'recall': 0.5, 'operating_point': 'calibrated, x; in use: '
                                 'score_threshold 0.9, gv_min_inliers 3'})])
    assert table.splitlines()[1].endswith('score_threshold 0.9, gv_min_inliers 3')


@pytest.mark.ros
@pytest.mark.slow
def test_demo_runs_both_models_on_the_same_bag(tmp_path) -> None:
    out = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, '-m', 'vpr_ros.tools.demo', '--max-frames', '120',
                           '--out', str(out)], env=os.environ.copy(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / 'demo_summary.json').read_text())
    runs = summary['side_by_side']
    assert [r['label'] for r in runs] == ['imagenet (built-in)', 'gcl_garden (shipped)']
    assert all(r['frames_processed'] == 120 for r in runs)
    # each at its own calibrated point
    for run, model in zip(runs, ('', 'gcl_garden')):
        point, _ = model_operating_point(model)
        assert f'in use: score_threshold {point.score_threshold:.4f}' in run['operating_point']
    assert (out / 'demo_gcl_garden_shipped' / 'demo_summary.json').exists()
    assert (out / 'demo_side_by_side.png').stat().st_size > 20_000
    assert 'side by side on the same bag' in proc.stdout
