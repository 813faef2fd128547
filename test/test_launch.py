"""
launch/vpr.launch.py: real launch_ros inspection when installed, static checks otherwise.

launch and launch_ros are not on PyPI, so the static part reads the file's AST: the params_file
default points at config/vpr.yaml (which exists and setup.py installs), the topic arguments are
used as remappings, and the Fast DDS profile is set only when the user has not set one.
"""
import ast
import os
import runpy

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch', 'vpr.launch.py')


@pytest.fixture(scope='module')
def tree() -> ast.Module:
    with open(LAUNCH) as f:
        return ast.parse(f.read())


def _calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _strings(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def test_params_file_defaults_to_installed_vpr_yaml(tree) -> None:
    args = {c.args[0].value: c for c in _calls(tree, 'DeclareLaunchArgument')}
    assert {'params_file', 'camera_topic', 'pose_topic'} <= set(args)
    default = _kw(args['params_file'], 'default_value')
    assert _strings(default) == ['config', 'vpr.yaml']
    assert any(c.args and getattr(c.args[0], 'id', '') == 'PACKAGE'
               for c in _calls(tree, 'get_package_share_directory'))
    assert os.path.isfile(os.path.join(REPO, 'config', 'vpr.yaml'))
    with open(os.path.join(REPO, 'setup.py')) as f:
        setup_src = f.read()
    assert "glob('config/*.yaml')" in setup_src and "glob('launch/*.launch.py')" in setup_src


def test_topic_arguments_are_remappings(tree) -> None:
    node = _calls(tree, 'Node')[0]
    assert _kw(node, 'executable').value == 'vpr_node'
    remaps = _kw(node, 'remappings')
    froms = [t.elts[0].value for t in remaps.elts]
    assert {'/camera/image_raw', '/camera/image_raw/compressed', '/odom'} <= set(froms)
    targets = {n.id for t in remaps.elts for n in ast.walk(t.elts[1]) if isinstance(n, ast.Name)}
    assert {'camera_topic', 'pose_topic'} <= targets


def test_fastdds_profile_set_unless_user_set_one(tree) -> None:
    (setenv,) = _calls(tree, 'SetEnvironmentVariable')
    env = setenv.args[1]
    assert getattr(env.func, 'id', '') == 'EnvironmentVariable'
    assert 'fastdds_shm16mb.xml' in _strings(_kw(env, 'default_value'))
    assert os.path.isfile(os.path.join(REPO, 'config', 'fastdds_shm16mb.xml'))


def test_launch_description_with_launch_ros(monkeypatch) -> None:
    pytest.importorskip('launch_ros')
    import ament_index_python.packages as aip
    monkeypatch.setattr(aip, 'get_package_share_directory', lambda _pkg: REPO)
    ld = runpy.run_path(LAUNCH)['generate_launch_description']()
    from launch.actions import DeclareLaunchArgument
    names = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert {'params_file', 'camera_topic', 'pose_topic'} <= set(names)
