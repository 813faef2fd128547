"""
A colcon workspace with this package, built by the README's recipe with the real tools.

The real launch/CLI tools (launch, launch_ros, ros2cli) and colcon are not on PyPI: `make setup`
installs them into .venv from ../shared/ros2-tools (see its PROVENANCE.md). Tests that need them
skip only where ../shared/ros2-tools is absent; where it exists and the tools are missing, they
fail (run `make setup`). The .venv plays the part of /opt/ros/kilted: its prefix goes on
AMENT_PREFIX_PATH and its bin/ on PATH.

`built_workspace` copies the sources (tracked and untracked-but-not-ignored files of the working
tree, i.e. what a commit of it would hold) into `<ws>/src/vpr_ros` and runs the README's recipe
block, skipping only its dependency-install lines (rosdep, pip: the venv already has them). It
is built once per test session per variant and shared by the test modules (module-level cache).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_DIR = os.path.join(os.path.dirname(REPO), 'shared', 'ros2-tools')
BIN = os.path.dirname(sys.executable)
RECIPE_MARK = '<!-- workspace recipe: test/test_workspace.py runs this block -->'
SYMLINK_BUILD = 'colcon build --symlink-install'
# What the recipe runs that the test does not, and why; anything else in it runs verbatim.
SKIPPED_PREFIXES = ('rosdep install', 'pip install')  # the venv already holds the dependencies
_BUILT: dict[tuple[str, bool], tuple[str, str]] = {}


def require_tools() -> None:
    """Skip without ../shared/ros2-tools; fail when it is there but not installed."""
    if not os.path.isdir(TOOLS_DIR):
        pytest.skip(f'{TOOLS_DIR} is not beside this checkout: no real ros2 launch/CLI tools or '
                    'colcon to test with')
    missing = [t for t in ('ros2', 'colcon') if not os.path.exists(os.path.join(BIN, t))]
    if missing:
        pytest.fail(f'{missing} missing in {BIN} although {TOOLS_DIR} exists: run `make setup`')


def ros_prefix_exports() -> str:
    """Return the shell line that stands in for `source /opt/ros/kilted/setup.bash`."""
    return f'export AMENT_PREFIX_PATH={sys.prefix} PATH={BIN}:$PATH'


def readme_recipe() -> list[str]:
    """Lines of the README's workspace recipe (the ```bash block after RECIPE_MARK)."""
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    assert RECIPE_MARK in text, f'README.md lost its recipe mark {RECIPE_MARK!r}'
    block = re.search(r'```bash\n(.*?)```', text[text.index(RECIPE_MARK):], re.S)
    assert block, 'no ```bash block after the recipe mark'
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def recipe_script(ws: str, symlink: bool) -> str:
    """Return the recipe as the test runs it in `ws` (substitutions: this module)."""
    lines = readme_recipe()
    assert sum(SYMLINK_BUILD in ln for ln in lines) == 1, lines
    out = ['set -e']
    for line in lines:
        cmd = line.split('#')[0].strip()
        if cmd.startswith(SKIPPED_PREFIXES):
            continue
        if cmd == 'source /opt/ros/kilted/setup.bash':
            cmd = ros_prefix_exports()
        elif cmd.startswith('git clone '):
            assert cmd.endswith(' vpr_ros'), cmd
            cmd = 'test -f vpr_ros/package.xml'  # copied in by copy_sources
        if not symlink:
            cmd = cmd.replace(SYMLINK_BUILD, 'colcon build')
        out.append(cmd.replace('~/ros2_ws', ws))
    return '\n'.join(out) + '\n'


def copy_sources(dst: str) -> None:
    """Copy what a commit of the working tree would hold (symlinks kept as symlinks)."""
    names = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                           cwd=REPO, check=True, capture_output=True).stdout.split(b'\0')
    for raw in names:
        rel = raw.decode()
        src = os.path.join(REPO, rel)
        if not rel or not os.path.lexists(src):
            continue  # deleted in the working tree
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel), follow_symlinks=False)


def built_workspace(base: str, symlink: bool) -> tuple[str, str]:
    """(workspace dir, recipe output), built once per session for `symlink`."""
    require_tools()
    key = (base, symlink)
    if key not in _BUILT:
        ws = os.path.join(base, 'ws_symlink' if symlink else 'ws_plain')
        shutil.rmtree(ws, ignore_errors=True)
        copy_sources(os.path.join(ws, 'src', 'vpr_ros'))
        proc = subprocess.run(['bash', '-c', recipe_script(ws, symlink)], cwd=ws, env=tool_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f'recipe failed in {ws}:\n{proc.stdout}\n{proc.stderr}'
        _BUILT[key] = (ws, proc.stdout)
    return _BUILT[key]


def tool_env() -> dict:
    """Copy the parent's environment whole, with unbuffered, uncoloured output."""
    env = os.environ.copy()
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    return env


def workspace_env(ws: str) -> dict:
    """Environment after `source install/setup.bash` in `ws` (on top of the ROS prefix)."""
    out = subprocess.run(
        ['bash', '-c', f'{ros_prefix_exports()} && source {ws}/install/setup.bash && env -0'],
        env=tool_env(), capture_output=True, check=True).stdout
    return dict(item.decode().split('=', 1) for item in out.split(b'\0') if b'=' in item)
