"""
Issue 20 #6: parameter mistakes that used to pass without a word (ROS-free checks).

How `top_k:=5.5` got through: `-p top_k:=5.5` and a params file are refused by rclpy's static
typing (test_node_params.py), and `validate` refuses a double for an integer; but
`ros2 launch vpr_ros vpr.launch.py top_k:=5.5` is a launch argument the launch file does not
declare, which launch drops silently: the node ran with 5. `launch_overrides` turns such
arguments into validated parameter values (or a ParamError naming them) for the launch file.
`validate` did truncate doubles in an integer array ([224.5, 224] -> [224, 224]).
"""
import os

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vpr_ros.core.errors import ImageError
from vpr_ros.core.msg_convert import any_image_from_msg, compressed_from_msg, image_from_msg
from vpr_ros.ros.params import ParamError, Params, validate


def test_integers_refuse_non_integral_doubles_naming_the_parameter() -> None:
    for name, value in (('top_k', 5.5), ('image_size', [224.5, 224]),
                        ('image_size', [224, float('nan')])):
        with pytest.raises(ParamError, match=f"parameter '{name}'"):
            validate(name, value)
    assert validate('image_size', [224, 224]) == [224, 224]


def test_launch_arguments_that_name_parameters_are_validated_or_refused() -> None:
    from vpr_ros.ros.params import launch_overrides

    declared = {'camera_topic', 'namespace', 'params_file'}
    assert launch_overrides({'camera_topic': '/x', 'top_k': '7', 'load_map': 'false',
                             'score_threshold': '0.9', 'use_sim_time': 'true'}, declared) == (
        {'top_k': 7, 'load_map': False, 'score_threshold': 0.9, 'use_sim_time': True}, [])
    with pytest.raises(ParamError, match=r"parameter 'top_k': 5\.5 is not accepted; expected "
                                         r'integer in \[1, 100\]'):
        launch_overrides({'top_k': '5.5'}, declared)
    assert launch_overrides({'tpo_k': '3'}, declared) == ({}, ["'tpo_k' (did you mean "
                                                               "'top_k'?)"])


def test_unknown_parameters_are_named_with_suggestions() -> None:
    from vpr_ros.ros.params import unknown_parameters

    got = unknown_parameters(['tpo_k', 'top_k', 'use_sim_time', 'qos_overrides./x.depth',
                              'map_idx', 'zzz_nothing_like_it'])
    assert got == ["'tpo_k' (did you mean 'top_k'?)", "'map_idx' (did you mean 'map_index' or "
                   "'map_dir'?)", "'zzz_nothing_like_it'"]


def test_map_dir_of_an_unknown_user_is_refused_and_relative_is_resolved(tmp_path,
                                                                        monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match="parameter 'map_dir'.*'nosuchuser_vpr', which does "
                                         'not exist'):
        Params({'map_dir': '~nosuchuser_vpr/map'})
    with pytest.raises(ParamError, match="'map_dir'"):
        Params({'map_dir': '~nosuchuser_vpr'})
    assert os.listdir(tmp_path) == []   # nothing called ~nosuchuser_vpr was made
    assert Params({'map_dir': 'maps/a'}).map_path == str(tmp_path / 'maps' / 'a')
    assert Params({'map_dir': '~/m'}).map_path == os.path.join(os.path.expanduser('~'), 'm')
    assert Params({'map_dir': ''}).map_path == ''


def test_default_map_dir_is_per_node(tmp_path, monkeypatch) -> None:
    """Two robots at their defaults used to share ~/.ros/vpr_ros/map (the second: 'in use')."""
    from vpr_ros.ros.params import BY_NAME, map_path, node_map_dir

    monkeypatch.setenv('HOME', str(tmp_path))
    default = BY_NAME['map_dir'].default
    paths = {map_path(node_map_dir(default, ns, name)) for ns, name in (
        ('/robot1', 'vpr_node'), ('/robot2', 'vpr_node'), ('/', 'vpr_node'),
        ('/robot1', 'vpr_b'), ('/fleet/robot1', 'vpr_node'))}
    assert paths == {str(tmp_path / '.ros' / 'vpr_ros' / p / 'map') for p in (
        'robot1/vpr_node', 'robot2/vpr_node', 'vpr_node', 'robot1/vpr_b',
        'fleet/robot1/vpr_node')}
    assert node_map_dir('/data/{name}-{namespace}', '/r1', 'n') == '/data/n-r1'
    assert Params({}).map_path == str(tmp_path / '.ros' / 'vpr_ros' / 'vpr_node' / 'map')
    with pytest.raises(ParamError, match=r"parameter 'map_dir'.*'\{nmae\}'; expected only "
                                         r'\{namespace\} and \{name\}'):
        Params({'map_dir': '/data/{nmae}'})


def test_start_warnings_name_unknown_parameters_and_a_map_at_the_old_default(
        tmp_path, monkeypatch) -> None:
    from vpr_ros.ros.params import BY_NAME
    from vpr_ros.ros.startup_checks import start_warnings

    monkeypatch.setenv('HOME', str(tmp_path))
    default = BY_NAME['map_dir'].default
    path = Params({}).map_path
    assert start_warnings(['top_k', 'use_sim_time'], default, path) == []
    (warning,) = start_warnings(['tpo_k', 'top_k'], default, path)
    assert "unknown parameter(s) ignored: 'tpo_k' (did you mean 'top_k'?)" in warning
    old = tmp_path / '.ros' / 'vpr_ros' / 'map'
    old.mkdir(parents=True)
    (old / 'CURRENT').write_text('gen-000001')
    (warning,) = start_warnings([], default, path)
    assert f'old default map_dir {old} is not continued' in warning and path in warning
    assert start_warnings([], '/data/m', '/data/m') == []  # a map_dir of one's own: no word
    os.makedirs(path)
    with open(os.path.join(path, 'CURRENT'), 'w') as f:
        f.write('gen-000001')
    assert start_warnings([], default, path) == []  # the per-node map exists: continued


def _png_header(w: int, h: int, depth: int, colour: int) -> CompressedImage:
    """Make a PNG signature and IHDR declaring a size (no pixel data follows)."""
    ihdr = (w.to_bytes(4, 'big') + h.to_bytes(4, 'big') + bytes([depth, colour, 0, 0, 0]))
    msg = CompressedImage(format='png')
    msg.data = b'\x89PNG\r\n\x1a\n' + (13).to_bytes(4, 'big') + b'IHDR' + ihdr + b'\0' * 4
    return msg


def test_decoded_bytes_are_bounded_before_decoding() -> None:
    """4096x4096 16-bit RGBA: at the pixel limit, but 128 MiB decoded (+706 MB measured)."""
    with pytest.raises(ImageError, match='decodes to 134217728 bytes, over the limit of '
                                         '67108864'):
        compressed_from_msg(_png_header(4096, 4096, 16, 6))
    with pytest.raises(ImageError, match='decodes to'):
        compressed_from_msg(_png_header(4096, 4096, 16, 2))   # 16-bit RGB: 96 MiB
    # Raw 16-bit colour likewise, read from the header before the data.
    raw = Image(height=4096, width=4096, encoding='rgba16', step=4096 * 8)
    with pytest.raises(ImageError, match='decodes to 134217728 bytes'):
        image_from_msg(raw)
    # Real images: a 16-bit RGBA PNG over the byte budget of a small limit, then under it.
    img = (np.random.default_rng(0).integers(0, 65535, (64, 64, 4))).astype(np.uint16)
    msg = CompressedImage(format='png')
    msg.data = cv2.imencode('.png', img)[1].tobytes()
    with pytest.raises(ImageError, match='bytes a pixel'):
        any_image_from_msg(msg, max_pixels=64 * 64)
    out, enc = any_image_from_msg(msg, max_pixels=2 * 64 * 64)
    assert out.shape[:2] == (64, 64) and out.dtype == np.uint8
    # 8-bit RGBA at the pixel limit is within the budget.
    rgba = Image(height=64, width=64, encoding='rgba8', step=256, data=bytes(64 * 64 * 4))
    assert image_from_msg(rgba, max_pixels=64 * 64)[0].shape == (64, 64, 4)
