"""
Parameters: the table, config/vpr.yaml and the descriptors agree, and bad values stop start-up.

The start-up failures run the real node process: it must exit non-zero, naming the parameter
and what it accepts on stderr, before loading a model or touching a map.
"""
import os
import sys
import threading

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ros_fixtures import run_to_exit  # noqa: E402

from vpr_ros.ros.diagnostics import RateMeter, RollingStats  # noqa: E402
from vpr_ros.ros.frame_intake import DropOldestQueue  # noqa: E402
from vpr_ros.ros.params import (  # noqa: E402
    BY_NAME,
    descriptor,
    markdown_table,
    ParamError,
    Params,
    SPECS,
    validate,
    yaml_text,
)
from vpr_ros.ros.startup_checks import check_map_dir, cost_warnings  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_yaml_is_the_table() -> None:
    with open(os.path.join(REPO, 'config', 'vpr.yaml')) as f:
        text = f.read()
    assert text == yaml_text(), 'regenerate config/vpr.yaml from node_params.yaml_text()'
    values = yaml.safe_load(text)['/**']['ros__parameters']
    assert values == {s.name: s.default for s in SPECS if not s.calibrated}
    for s in SPECS:  # the model's calibrated point applies unless the user sets these
        assert (f'    # {s.name}: ' in text) == s.calibrated, s.name
    Params(values)  # the defaults are valid


def test_readme_parameter_table_is_the_table() -> None:
    with open(os.path.join(REPO, 'README.md')) as f:
        assert markdown_table() in f.read(), "regenerate README.md's table: markdown_table()"


def test_contract_parameters_exist() -> None:
    for name in ('image_transport', 'qos', 'pose_type',
                 'model_path', 'device', 'image_size', 'keyframe_min_distance_m',
                 'keyframe_min_angle_deg', 'keyframe_max_interval_s',
                 'keyframe_novelty_threshold', 'exclusion_window_s', 'top_k',
                 'score_threshold', 'temporal_consistency', 'geometric_verification', 'map_dir',
                 'autosave_period_s', 'load_map', 'loop_closure_output'):
        assert name in BY_NAME and BY_NAME[name].description


def test_descriptors_carry_ranges_and_read_only() -> None:
    d = descriptor(BY_NAME['score_threshold'])
    assert not d.read_only and d.floating_point_range[0].from_value == -1.0
    assert d.floating_point_range[0].to_value == 1.0 and d.description
    d = descriptor(BY_NAME['top_k'])
    assert d.integer_range[0].from_value == 1 and d.integer_range[0].to_value == 100
    d = descriptor(BY_NAME['image_transport'])
    assert d.read_only and "'compressed'" in d.additional_constraints


@pytest.mark.parametrize('name,value,words', [
    ('top_k', 0, 'integer in [1, 100]'),
    ('score_threshold', 1.5, 'double in [-1.0, 1.0]'),
    ('score_threshold', float('nan'), 'double'),
    ('image_transport', 'theora', "'raw', 'compressed'"),
    ('pose_type', 'Pose', "'PoseStamped'"),
    ('load_map', 'yes', 'bool'),
    ('image_size', [224], 'two integers'),
    ('top_k', 2.0, 'integer'),
    # issue 11 #9/#10: absurd values (overflow, busy loops, gigabytes per frame) are refused
    ('top_k', 5.5, 'integer in [1, 100]'),
    ('hnsw_ef_search', 10**12, 'integer in [8, 65536]'),
    ('hnsw_m', 10**12, 'integer in [4, 256]'),
    ('hnsw_m', 1e12, 'integer'),
    ('hnsw_ef_construction', 0, 'integer in [8, 4096]'),
    ('markers_period_s', 0.0001, '0 (off) or double in [0.1, 3600.0]'),
    ('autosave_period_s', 0.001, '0 (off) or double in [1.0, 86400.0]'),
    ('image_size', [4096, 4096], 'two integers, each in [0, 1024]'),
    ('max_image_pixels', 2**40, 'integer in [4096, 1073741824]'),
    ('max_image_pixels', 0, 'integer in [4096'),
    ('stamp_window_s', -1.0, 'double in [0.0, 10000000.0]'),
    ('stamp_window_s', float('inf'), 'double'),
])
def test_validate_names_parameter_and_range(name, value, words) -> None:
    with pytest.raises(ParamError) as err:
        validate(name, value)
    assert repr(name) in str(err.value) and words in str(err.value)


def test_params_checks_and_mapping() -> None:
    with pytest.raises(ParamError, match="'model_path'"):
        Params({'model_path': '/no/such/model.pt'})
    with pytest.raises(ParamError, match="'image_size'"):
        Params({'image_size': [224, 0]})
    with pytest.raises(ParamError, match='unknown'):
        Params({'no_such_parameter': 1})
    p = Params({'image_transport': 'compressed', 'top_k': 7, 'exclusion_window_s': 12.0})
    assert 'camera_topic' not in BY_NAME and 'pose_topic' not in BY_NAME  # topics: remaps
    c = p.detector_config()
    assert c.top_k == 7 and c.exclusion_s == 12.0
    assert p.with_changes({'top_k': 9}).top_k == 9 and p.top_k == 7


def test_off_values_and_bounds_accepted_and_costs_warned() -> None:
    p = Params({'markers_period_s': 0.0, 'autosave_period_s': 0.0, 'hnsw_m': 4,
                'hnsw_ef_search': 65536, 'image_size': [1024, 1024], 'stamp_window_s': 0.0})
    assert p.markers_period_s == 0.0 and p.autosave_period_s == 0.0
    assert Params({}).max_image_pixels == 4096 * 4096 and cost_warnings(Params({})) == []
    warned = ' | '.join(cost_warnings(Params({'image_size': [1024, 1024],
                                              'autosave_period_s': 1.0,
                                              'markers_period_s': 0.1,
                                              'max_image_pixels': 1 << 30})))
    for words in ('image_size 1024x1024 is 21x', 'autosave_period_s 1:', 'markers_period_s 0.1',
                  'max_image_pixels 1073741824: one decoded frame may take up to 4096 MiB'):
        assert words in warned, warned


def test_map_dir_must_be_writable_and_the_check_leaves_no_trace(tmp_path) -> None:
    a_file = tmp_path / 'a_file'
    a_file.write_text('not a directory')
    for bad in (a_file, a_file / 'map', '/proc/vpr_map', '/proc/self'):
        with pytest.raises(ParamError, match="parameter 'map_dir'.*not a writable directory"):
            check_map_dir(str(bad))
    new = tmp_path / 'new' / 'deeper' / 'map'
    check_map_dir(str(new))
    assert sorted(os.listdir(tmp_path)) == ['a_file']  # created to probe, removed again
    existing = tmp_path / 'map'
    existing.mkdir()
    (existing / 'keep').write_text('x')
    check_map_dir(str(existing))
    assert os.listdir(existing) == ['keep']
    check_map_dir('')  # memory only: nothing to check
    if os.geteuid() != 0:  # root writes into mode 0555 directories anyway
        existing.chmod(0o555)
        try:
            with pytest.raises(ParamError, match="'map_dir'"):
                check_map_dir(str(existing))
        finally:
            existing.chmod(0o755)


def test_drop_oldest_queue_never_blocks_and_counts() -> None:
    q = DropOldestQueue(1)
    assert not q.put(1) and q.put(2) and q.put(3)
    assert q.dropped == 2 and q.get(0.01) == 3 and q.get(0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(q.get(5.0)))
    t.start()
    q.put('x')
    t.join(5)
    assert got == ['x']
    q.close()
    assert q.get(5.0) is None  # closed and empty: returns at once


def test_stats() -> None:
    s = RollingStats(10)
    for v in range(100):
        s.add(v)
    assert s.percentile(50) in (94, 95) and s.percentile(100) == 99
    r = RateMeter(1.0)
    for k in range(10):
        r.tick(r._start + 0.5 + k * 0.05)
    assert r.rate(r._start + 1.0) == pytest.approx(10.0)


@pytest.mark.ros
@pytest.mark.parametrize('params,words', [
    ({'top_k': 500}, ["'top_k'", '[1, 100]']),
    ({'score_threshold': 2.0}, ["'score_threshold'", '[-1.0, 1.0]']),
    ({'image_transport': 'theora'}, ["'image_transport'", "'compressed'"]),
    ({'model_path': '/no/such/model.pt'}, ["'model_path'", 'does not exist']),
    ({'top_k': 5.5}, ["'top_k'", 'wrong type', 'integer in [1, 100]']),
    ({'hnsw_ef_search': 10**12}, ["'hnsw_ef_search'", '[8, 65536]']),
    ({'hnsw_m': 1e12}, ["'hnsw_m'", 'wrong type']),
    ({'hnsw_m': 2**64}, ["'hnsw_m'", 'integer in [4, 256]']),
    ({'max_image_pixels': 2**63 - 1}, ["'max_image_pixels'", '[4096, 1073741824]']),
    ({'markers_period_s': 0.0001}, ["'markers_period_s'", '0 (off) or double in [0.1']),
    ({'autosave_period_s': 0.001}, ["'autosave_period_s'", '0 (off) or double in [1.0']),
    ({'image_size': [4096, 4096]}, ["'image_size'", '[0, 1024]']),
])
def test_bad_parameters_stop_start_up(tmp_path, params, words) -> None:
    res = run_to_exit({'map_dir': str(tmp_path / 'map'), **params}, str(tmp_path), 'vpr_bad',
                      timeout=60.0)
    assert res.returncode == 2, res.stderr
    for w in words:
        assert w in res.stderr, res.stderr
    assert not os.path.exists(tmp_path / 'map')


@pytest.mark.ros
def test_corrupt_model_file_stops_start_up(tmp_path) -> None:
    model = tmp_path / 'model.pt'
    model.write_bytes(b'this is not a model file')
    res = run_to_exit({'map_dir': str(tmp_path / 'map'), 'model_path': str(model)},
                      str(tmp_path), 'vpr_bad_model')
    assert res.returncode == 2, res.stderr
    assert "'model_path'" in res.stderr, res.stderr
    assert not os.path.exists(tmp_path / 'map')


@pytest.mark.ros
@pytest.mark.parametrize('where', ['file', 'under_file', 'proc'])
def test_unwritable_map_dir_stops_start_up_first(tmp_path, where) -> None:
    """Issue 11 #8: exit 2 naming map_dir at once (the model is not even loaded)."""
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    map_dir = {'file': str(a_file), 'under_file': str(a_file / 'map'),
               'proc': '/proc/vpr_map'}[where]
    res = run_to_exit({'map_dir': map_dir}, str(tmp_path), 'vpr_bad_map', timeout=60.0)
    assert res.returncode == 2, res.stderr
    assert "parameter 'map_dir'" in res.stderr and 'not a writable directory' in res.stderr
    assert 'vpr_node ready' not in res.stdout + res.stderr
    assert a_file.read_text() == 'x' and sorted(os.listdir(tmp_path)) == [
        'a_file', 'vpr_bad_map.yaml']
