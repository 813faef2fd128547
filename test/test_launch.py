"""
launch/vpr.launch.py: static checks always, the real launch_ros objects where installed.

The static part reads the file's AST (launch is not on PyPI, so a venv may lack it): the
params_file default points at config/vpr.yaml (which exists and setup.py installs), the Fast DDS
profile is set only when the user has not set one, and launch's SIGTERM escalation leaves room
for a large map save. With launch/launch_ros installed (make setup, ../shared/ros2-tools), the
launch description is built and its node action evaluated: arguments, remaps of the node's
relative topic names, namespace, sigterm_timeout. test_ros2_tools.py runs it for real.
"""
import ast
import os
import runpy

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch', 'vpr.launch.py')
ARGS = {'params_file', 'namespace', 'node_name', 'camera_topic', 'pose_topic',
        'loop_closure_topic', 'sigterm_timeout', 'lifecycle'}


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


def _constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == name:
            return node.value.value
    raise AssertionError(f'{name} not assigned in the launch file')


def test_params_file_defaults_to_installed_vpr_yaml(tree) -> None:
    args = {c.args[0].value: c for c in _calls(tree, 'DeclareLaunchArgument')}
    assert ARGS <= set(args)
    default = _kw(args['params_file'], 'default_value')
    assert _strings(default) == ['config', 'vpr.yaml']
    assert any(c.args and getattr(c.args[0], 'id', '') == 'PACKAGE'
               for c in _calls(tree, 'get_package_share_directory'))
    assert os.path.isfile(os.path.join(REPO, 'config', 'vpr.yaml'))
    with open(os.path.join(REPO, 'setup.py')) as f:
        setup_src = f.read()
    assert "glob('config/*.yaml')" in setup_src and "glob('launch/*.launch.py')" in setup_src


def test_params_file_names_no_topics() -> None:
    """Topics are chosen by remapping only: a topic in the params file would fight a remap."""
    with open(os.path.join(REPO, 'config', 'vpr.yaml')) as f:
        text = f.read()
    assert 'camera_topic' not in text and 'pose_topic:' not in text


def test_sigterm_timeout_leaves_room_for_saving(tree) -> None:
    # launch's default is 5 s after SIGINT; a large map's save (GBs of blobs, fsync) needs more
    assert float(_constant(tree, 'SIGTERM_TIMEOUT_S')) >= 30.0
    (node,) = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and _kw(c, 'executable')]
    assert _kw(node, 'sigterm_timeout') is not None


def test_fastdds_profile_set_unless_user_set_one(tree) -> None:
    (setenv,) = _calls(tree, 'SetEnvironmentVariable')
    env = setenv.args[1]
    assert getattr(env.func, 'id', '') == 'EnvironmentVariable'
    assert 'fastdds_shm16mb.xml' in _strings(_kw(env, 'default_value'))
    assert os.path.isfile(os.path.join(REPO, 'config', 'fastdds_shm16mb.xml'))


@pytest.fixture
def launch_module(monkeypatch) -> dict:
    pytest.importorskip('launch_ros', reason='launch_ros not installed (make setup installs it '
                        'from ../shared/ros2-tools)')
    import ament_index_python.packages as aip
    monkeypatch.setattr(aip, 'get_package_share_directory', lambda _pkg: REPO)
    return runpy.run_path(LAUNCH)


def test_remaps_of_relative_names(launch_module) -> None:
    remaps = launch_module['remaps']
    assert remaps('', '', '') == []  # the node's own defaults
    assert remaps('/front/image_raw/', '/robot/odom', '/lio_loop/loop_closure_detection') == [
        ('camera/image_raw', '/front/image_raw'),
        ('camera/image_raw/compressed', '/front/image_raw/compressed'),
        ('odom', '/robot/odom'), ('pose', '/robot/odom'),
        ('vpr/loop_closure', '/lio_loop/loop_closure_detection')]


def _node_action(launch_module, **arguments):
    """Evaluate the launch file's node action with `arguments` on top of the defaults."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_context import LaunchContext

    ld = launch_module['generate_launch_description']()
    declared = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert ARGS <= set(declared)
    context = LaunchContext()
    for name, arg in declared.items():
        context.launch_configurations[name] = ''.join(
            s.perform(context) for s in arg.default_value)
    context.launch_configurations.update(arguments)
    (opaque,) = [a for a in ld.entities if isinstance(a, OpaqueFunction)]
    (node,) = opaque.execute(context)
    return node, context


def test_launch_description_and_node_action(launch_module) -> None:
    from launch_ros.actions import LifecycleNode, Node

    node, context = _node_action(launch_module, namespace='/robot1',
                                 camera_topic='front/image_raw')
    assert isinstance(node, Node) and not isinstance(node, LifecycleNode)
    node._perform_substitutions(context)  # what launch does before it starts the process
    assert node.expanded_node_namespace == '/robot1'
    assert node.node_name == '/robot1/vpr_node'
    rules = dict(node.expanded_remapping_rules)
    assert rules['camera/image_raw'] == 'front/image_raw'  # relative: inside /robot1
    assert 'odom' not in rules  # empty pose_topic: the node's default name



def test_lifecycle_argument_starts_the_managed_node(launch_module) -> None:
    from launch_ros.actions import LifecycleNode

    node, context = _node_action(launch_module, lifecycle='true', namespace='/robot2')
    assert isinstance(node, LifecycleNode)
    node._perform_substitutions(context)
    assert node.node_executable == 'vpr_lifecycle_node'
    assert node.node_name == '/robot2/vpr_node'
    plain, _ = _node_action(launch_module)
    assert plain.node_executable == 'vpr_node'


def test_parameter_arguments_are_checked_and_passed(launch_module) -> None:
    """`top_k:=5.5` used to be dropped by launch without a word; now it stops the launch."""
    _, context = _node_action(launch_module, top_k='7', use_sim_time='true',
                              map_dir='/data/m', image_size='[240, 320]')
    given = launch_module['parameter_arguments'](context, ARGS)
    assert given == {'top_k': 7, 'use_sim_time': True, 'map_dir': '/data/m',
                     'image_size': [240, 320]}
    with pytest.raises(RuntimeError, match="launch argument refused: parameter 'top_k': 5.5"):
        _node_action(launch_module, top_k='5.5')
    with pytest.raises(RuntimeError, match="parameter 'map_dir'"):
        _node_action(launch_module, map_dir='/m/{robot}')
    import logging

    import launch.logging
    warned = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())
    launch.logging.get_logger('vpr.launch.py').addHandler(handler)  # it does not propagate
    try:
        _, context = _node_action(launch_module, tpo_k='3')
    finally:
        launch.logging.get_logger('vpr.launch.py').removeHandler(handler)
    assert any("'tpo_k' (did you mean 'top_k'?)" in w for w in warned), warned
    assert launch_module['parameter_arguments'](context, ARGS) == {}
