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

from vpr_ros.ros.params import BY_NAME, descriptor, ParamError, Params, SPECS, validate, yaml_text  # noqa: E402
from vpr_ros.ros.worker import DropOldestQueue, RateMeter, RollingStats  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_yaml_is_the_table() -> None:
    with open(os.path.join(REPO, 'config', 'vpr.yaml')) as f:
        text = f.read()
    assert text == yaml_text(), 'regenerate config/vpr.yaml from node_params.yaml_text()'
    values = yaml.safe_load(text)['/**']['ros__parameters']
    assert values == {s.name: s.default for s in SPECS}
    Params(values)  # the defaults are valid


def test_contract_parameters_exist() -> None:
    for name in ('camera_topic', 'pose_topic', 'image_transport', 'qos', 'pose_type',
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
    assert p.image_topic == '/camera/image_raw/compressed'
    assert Params({}).image_topic == '/camera/image_raw'
    c = p.detector_config()
    assert c.top_k == 7 and c.exclusion_s == 12.0
    assert p.with_changes({'top_k': 9}).top_k == 9 and p.top_k == 7


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
])
def test_bad_parameters_stop_start_up(tmp_path, params, words) -> None:
    res = run_to_exit({'map_dir': str(tmp_path / 'map'), **params}, str(tmp_path), 'vpr_bad')
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
