"""
The package in a real colcon workspace: the README's recipe, both `colcon build` variants.

Issue 10 #4: `colcon build --symlink-install` failed (`package directory 'training' does not
exist`, from a package_dir mapping) while `training/` must stay the top-level home of
`vpr_ros.training`. Issue 10 #9: executables under lib/vpr_ros, share/ files and the ament index
entry, so `ros2 launch vpr_ros vpr.launch.py` finds the package; the README's recipe is the one
tested (ws_fixtures runs its block). Needs the real tools: skipped only without
../shared/ros2-tools.
"""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ws_fixtures import built_workspace, readme_recipe, workspace_env  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SHARE_FILES = ('package.xml', 'launch/vpr.launch.py', 'config/vpr.yaml',
               'config/fastdds_shm16mb.xml')
LAUNCH_ARGS = ('params_file', 'namespace', 'node_name', 'camera_topic', 'pose_topic',
               'loop_closure_topic', 'sigterm_timeout', 'lifecycle')


@pytest.fixture(scope='module', params=[True, False], ids=['symlink_install', 'copy_install'])
def workspace(request, tmp_path_factory) -> tuple[str, str, bool]:
    ws, out = built_workspace(str(tmp_path_factory.getbasetemp()), request.param)
    return ws, out, request.param


def test_recipe_is_the_readme_block() -> None:
    lines = readme_recipe()
    assert lines[0] == 'source /opt/ros/kilted/setup.bash'
    assert any(ln.startswith('rosdep install --from-paths src --ignore-src') for ln in lines)
    assert any('requirements-nokey.txt' in ln for ln in lines)
    assert lines[-1] == 'ros2 launch vpr_ros vpr.launch.py --show-args'


def test_install_layout(workspace) -> None:
    ws, _, symlink = workspace
    prefix = os.path.join(ws, 'install', 'vpr_ros')
    lib = os.path.join(prefix, 'lib', 'vpr_ros')
    for exe in ('vpr_node', 'vpr_lifecycle_node', 'vpr-play', 'vpr-train', 'vpr-export',
                'vpr-eval', 'vpr-sim'):
        assert os.access(os.path.join(lib, exe), os.X_OK), f'{exe} not in {lib}'
    assert not os.path.exists(os.path.join(prefix, 'bin', 'vpr_node'))
    share = os.path.join(prefix, 'share', 'vpr_ros')
    for rel in SHARE_FILES:
        assert os.path.isfile(os.path.join(share, rel)), rel
    if symlink:  # --symlink-install: share/ files link back into src/
        assert os.path.realpath(os.path.join(share, 'launch', 'vpr.launch.py')) == \
            os.path.join(ws, 'src', 'vpr_ros', 'launch', 'vpr.launch.py')
    assert os.path.isfile(os.path.join(prefix, 'share', 'ament_index', 'resource_index',
                                       'packages', 'vpr_ros'))


def test_show_args_from_the_installed_package(workspace) -> None:
    ws, out, _ = workspace
    for name in LAUNCH_ARGS:
        assert f"'{name}':" in out, out
    installed_yaml = os.path.join(ws, 'install', 'vpr_ros', 'share', 'vpr_ros', 'config',
                                  'vpr.yaml')
    assert f"(default: '{installed_yaml}')" in out, out


def test_workspace_python_is_the_workspace_copy(workspace) -> None:
    """Sourcing the workspace imports its vpr_ros (training included), not the dev checkout."""
    ws, _, symlink = workspace
    env = workspace_env(ws)
    code = ('import vpr_ros, vpr_ros.training.fit.train as t, vpr_ros.ros.node;'
            'print(vpr_ros.__file__); print(t.__file__)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pkg_file, train_file = proc.stdout.split()
    home = os.path.join(ws, 'build' if symlink else 'install', 'vpr_ros')
    assert pkg_file.startswith(home) and train_file.startswith(home), proc.stdout
    if symlink:  # edits in src/ take effect: the module is the source file itself
        assert os.path.realpath(train_file) == os.path.join(ws, 'src', 'vpr_ros', 'training',
                                                             'fit', 'train.py')
    prefix = subprocess.run(['ros2', 'pkg', 'prefix', 'vpr_ros'], env=env, capture_output=True,
                            text=True, timeout=120)
    assert prefix.stdout.strip() == os.path.join(ws, 'install', 'vpr_ros'), prefix


def test_training_stages_installed_and_experiments_not(workspace) -> None:
    """Every workflow stage of vpr_ros.training is installed; experiments/ is not (issue 18)."""
    ws, _, _ = workspace
    code = ('import importlib.util as u, vpr_ros.training.data.labels, vpr_ros.training.fit.train,'
            ' vpr_ros.training.ship.export, vpr_ros.training.eval.evaluate,'
            ' vpr_ros.training.demo.train_demo;'
            "print(u.find_spec('vpr_ros.training.ship_model'),"
            " u.find_spec('vpr_ros.training.collapse_experiment'));"
            "e = u.find_spec('experiments'); print(e.origin if e else None)")
    proc = subprocess.run([sys.executable, '-c', code], cwd=ws, env=workspace_env(ws),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ship, collapse, experiments = proc.stdout.split()
    assert ship == collapse == 'None', proc.stdout
    # a dev checkout on PYTHONPATH may still provide it; the workspace must not
    assert not experiments.startswith(ws + os.sep), proc.stdout
    for tree in ('install', 'build'):
        for dirpath, dirs, _ in os.walk(os.path.join(ws, tree)):
            assert 'experiments' not in dirs, dirpath


def test_installed_tools_run(workspace) -> None:
    """A training entry point runs from lib/vpr_ros (vpr_ros.training imports resolve)."""
    ws, _, _ = workspace
    proc = subprocess.run(['ros2', 'run', 'vpr_ros', 'vpr-export', '--help'], cwd=ws,
                          env=workspace_env(ws), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'usage' in proc.stdout.lower(), proc.stdout + proc.stderr


def test_installed_nodes_check_their_parameters(workspace) -> None:
    """Both node executables run from lib/vpr_ros: a bad parameter stops them, exit 2."""
    ws, _, _ = workspace
    for exe in ('vpr_node', 'vpr_lifecycle_node'):
        proc = subprocess.run(['ros2', 'run', 'vpr_ros', exe, '--ros-args', '-p', 'top_k:=0'],
                              cwd=ws, env=workspace_env(ws), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and "parameter 'top_k'" in proc.stderr, \
            f'{exe}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}'


def test_installed_package_holds_the_shipped_model(workspace) -> None:
    """The shipped model file is installed with the package (package_data), hash intact."""
    ws, _, _ = workspace
    code = ('import hashlib; from vpr_ros.model import shipped;'
            "p, sha = shipped.path_and_sha256('gcl_garden');"
            'print(p); print(hashlib.sha256(open(p, "rb").read()).hexdigest() == sha)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ws, env=workspace_env(ws),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    path, ok = proc.stdout.split()
    assert path.startswith(ws + os.sep) and ok == 'True', proc.stdout
