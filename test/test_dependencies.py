"""
package.xml and the requirements files against the rosdep database and the code's imports.

`rosdep install --from-paths src --ignore-src` fails for the whole workspace on one key that is
not in ros/rosdistro's rosdep/*.yaml, so every key must resolve there (a copy of those files is in
../shared/ros2-tools/rosdep, commit noted in its PROVENANCE.md). Every third-party import of the
installed code must map to a declared dependency, and every pip requirement to the right file:
requirements.txt (what a ROS 2 user installs with pip: never a ROS 2 wheel),
requirements-nokey.txt (no rosdep key), requirements-ros.txt (only ROS 2 wheels).
"""
import ast
import os
import re
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROSDEP_DIR = os.path.join(os.path.dirname(REPO), 'shared', 'ros2-tools', 'rosdep')
RUNTIME_DIRS = ('vpr_ros', 'training', 'launch')
TEST_DIRS = ('test',)
# the project's own: its packages and the test helper modules (test/*.py, on sys.path in tests)
PROJECT_MODULES = {'vpr_ros', 'training', 'experiments'} | {
    n[:-3] for n in os.listdir(os.path.join(REPO, 'test')) if n.endswith('.py')}

# import name -> (rosdep key, pip requirement that provides it); a dotted name wins over its
# top-level package. pip None: not on PyPI for ROS users (comes with ROS 2).
IMPORTS = {
    'numpy': ('python3-numpy', 'numpy'),
    'cv2': ('python3-opencv', 'opencv-python-headless'),
    'scipy': ('python3-scipy', 'scipy'),
    'torch': ('python3-torch', 'torch'),
    'torchvision': ('python3-torchvision', 'torchvision'),
    'faiss': ('python3-faiss', 'faiss-cpu'),
    'rosbags': ('python3-rosbags-pip', 'rosbags'),
    'rosbags.image': (None, 'rosbags-image'),
    'simplejpeg': ('python3-simplejpeg-pip', 'simplejpeg'),
    'matplotlib': ('python3-matplotlib', 'matplotlib'),
    'tqdm': ('python3-tqdm', 'tqdm'),
    'PIL': ('python3-pil', 'pillow'),
    'skimage': ('python3-skimage', 'scikit-image'),
    'onnxruntime': ('python3-onnxruntime-pip', 'onnxruntime'),
    'onnx': (None, 'onnx'),
    'pyrender': ('python3-pyrender-pip', 'pyrender'),
    'OpenGL': ('python3-opengl', 'PyOpenGL'),
    'yaml': ('python3-yaml', 'PyYAML'),
    'shapely': ('python3-shapely', 'shapely'),
    'pytest': ('python3-pytest', 'pytest'),
}
ROS_PACKAGES = {'rclpy', 'rcl_interfaces', 'ament_index_python', 'launch', 'launch_ros',
                'sensor_msgs', 'geometry_msgs', 'nav_msgs', 'std_msgs', 'std_srvs',
                'visualization_msgs', 'diagnostic_msgs', 'rosgraph_msgs'}
# Optional dependencies of one tool each (the SLAM back-end and its trajectory error): pinned in
# requirements-slam.txt, not in package.xml or requirements.txt (a user who never runs the
# back-end never installs them), imported only inside functions of the modules named here.
OPTIONAL = {
    'gtsam': ('gtsam', {'vpr_ros/tools/pose_graph.py'}),
    'evo': ('evo', {'vpr_ros/tools/trajectory_error.py'}),
}
# Declared although no module imports them, and why.
NOT_IMPORTED = {
    'libosmesa6-dev': 'the OSMesa library PyOpenGL loads for headless rendering (sim)',
    'python3-pytest-timeout': 'pytest.ini: --timeout',
    'python3-ruff-pip': 'test_lint runs ruff (the ament flake8/pep257 rules)',
    'ros2cli': 'tests run the ros2 command',
    'ros2launch': 'the `ros2 launch` verb for launch/vpr.launch.py',
    'ros2topic': 'tests run ros2 topic echo', 'ros2param': 'tests run ros2 param set',
    'ros2service': 'tests run ros2 service call', 'ros2pkg': 'tests run ros2 pkg prefix',
    'ros2lifecycle': 'tests run ros2 lifecycle set/get',
    'lifecycle_msgs': 'rclpy.lifecycle (the managed node, vpr_lifecycle_node) imports it',
}


@pytest.fixture(scope='module')
def rosdep_keys() -> set[str]:
    """Every key rosdep resolves for Kilted: base.yaml, python.yaml and the ROS packages."""
    if not os.path.isdir(ROSDEP_DIR):
        pytest.skip(f'{ROSDEP_DIR} (the rosdep database copy) is not beside this checkout')
    keys: set[str] = set()
    for name in ('base.yaml', 'python.yaml'):
        with open(os.path.join(ROSDEP_DIR, name)) as f:
            keys |= set(yaml.load(f, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader)))
    with open(os.path.join(ROSDEP_DIR, 'kilted-distribution.yaml')) as f:
        dist = yaml.load(f, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))
    for repo, entry in dist['repositories'].items():
        release = entry.get('release')
        if release is not None:
            keys |= set(release.get('packages', [repo]))
    return keys


def package_deps() -> dict[str, set[str]]:
    root = ET.parse(os.path.join(REPO, 'package.xml')).getroot()
    deps: dict[str, set[str]] = {}
    for tag in ('depend', 'build_depend', 'buildtool_depend', 'exec_depend', 'test_depend'):
        deps[tag] = {e.text.strip() for e in root.findall(tag)}
    return deps


def third_party_imports(dirs: tuple[str, ...]) -> dict[str, str]:
    """Import name (dotted where IMPORTS has it) -> first file importing it."""
    found: dict[str, str] = {}
    for top in dirs:
        for dirpath, _, names in os.walk(os.path.join(REPO, top)):
            for name in sorted(names):
                if not name.endswith('.py'):
                    continue
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        mods = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        mods = [node.module]
                    else:
                        continue
                    for mod in mods:
                        key = _import_key(mod)
                        if key is not None:
                            found.setdefault(key, os.path.relpath(path, REPO))
    return found


def _import_key(module: str) -> str | None:
    top = module.split('.')[0]
    if top in sys.stdlib_module_names or top in PROJECT_MODULES:
        return None
    parts = module.split('.')
    for n in range(len(parts), 0, -1):
        if '.'.join(parts[:n]) in IMPORTS:
            return '.'.join(parts[:n])
    return top


def requirements(name: str) -> dict[str, str]:
    """Map pip name (lower case) -> pinned line of a requirements file (`-r` followed)."""
    out: dict[str, str] = {}
    with open(os.path.join(REPO, name)) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if line.startswith('-r '):
                out.update(requirements(line[3:].strip()))
            elif line:
                out[re.split(r'[=<>~!\[ ]', line)[0].lower()] = line
    return out


def test_every_package_xml_key_is_a_rosdep_key(rosdep_keys) -> None:
    bad = sorted(k for keys in package_deps().values() for k in keys if k not in rosdep_keys)
    assert not bad, f'package.xml keys unknown to rosdep (rosdep install would fail): {bad}'


def _undeclared(imports: dict[str, str], declared: set[str]) -> list[str]:
    nokey = requirements('requirements-nokey.txt')
    missing = []
    for mod, where in sorted(imports.items()):
        if mod in OPTIONAL:
            continue  # test_optional_dependencies_stay_in_their_tool
        if mod in ROS_PACKAGES:
            ok = mod in declared
        elif mod in IMPORTS:
            key, pip = IMPORTS[mod]
            ok = key in declared if key else pip.lower() in nokey
        else:
            ok = False  # a new third-party import: add it to IMPORTS and package.xml
        if not ok:
            missing.append(f'{mod} ({where})')
    return missing


def test_every_runtime_import_is_an_exec_depend() -> None:
    deps = package_deps()
    missing = _undeclared(third_party_imports(RUNTIME_DIRS), deps['exec_depend'] | deps['depend'])
    assert not missing, f'imported, not declared (package.xml, requirements-nokey.txt): {missing}'


def test_every_test_import_is_declared() -> None:
    deps = package_deps()
    declared = deps['exec_depend'] | deps['depend'] | deps['test_depend']
    missing = _undeclared(third_party_imports(TEST_DIRS), declared)
    assert not missing, f'tests import undeclared packages: {missing}'


def test_no_declared_key_without_a_use() -> None:
    """A key nothing imports (e.g. python3-shapely in exec_depend) is a stale install for users."""
    deps = package_deps()
    runtime = third_party_imports(RUNTIME_DIRS)
    tests = third_party_imports(TEST_DIRS)

    def used_keys(imports: dict[str, str]) -> set[str]:
        return {m if m in ROS_PACKAGES else (IMPORTS.get(m) or (None,))[0] for m in imports}

    stale_exec = deps['exec_depend'] - used_keys(runtime) - set(NOT_IMPORTED)
    stale_test = deps['test_depend'] - used_keys(tests) - used_keys(runtime) - set(NOT_IMPORTED)
    assert not stale_exec, f'exec_depend keys no runtime module imports: {sorted(stale_exec)}'
    assert not stale_test, f'test_depend keys no test imports or runs: {sorted(stale_test)}'


def test_requirements_split_ros_wheels_from_pip_dependencies() -> None:
    # requirements-post.txt: PyOpenGL, installed --no-deps after pyrender (which pins an older one)
    user = requirements('requirements.txt') | requirements('requirements-post.txt')
    ros = requirements('requirements-ros.txt')
    assert ros and all(name.startswith('ros-') for name in ros), sorted(ros)
    wheels_in_user = sorted(n for n in user if n.startswith('ros-'))
    assert not wheels_in_user, f'requirements.txt would install a second ROS 2: {wheels_in_user}'
    # Every Python dependency the runtime imports is pinned for the pip route.
    for mod in third_party_imports(RUNTIME_DIRS):
        if mod in OPTIONAL:
            assert OPTIONAL[mod][0] not in user, f'{mod} is optional: requirements-slam.txt'
        elif mod in ROS_PACKAGES:
            assert 'ros-' + mod.replace('_', '-') in ros or mod in {'launch', 'launch_ros'}, mod
        else:
            assert IMPORTS[mod][1].lower() in user, f'{mod}: {IMPORTS[mod][1]} not pinned'
    nokey_pips = {IMPORTS[m][1].lower() for m in IMPORTS if IMPORTS[m][0] is None}
    assert set(requirements('requirements-nokey.txt')) == nokey_pips


def test_nokey_requirements_really_have_no_rosdep_key(rosdep_keys) -> None:
    """What rosdep can install belongs in package.xml, not in requirements-nokey.txt."""
    lower = {k.lower() for k in rosdep_keys}
    for name in requirements('requirements-nokey.txt'):
        base = name.replace('_', '-')
        found = {f'python3-{base}', f'python3-{base}-pip'} & lower
        assert not found, f'{name} has rosdep key {found}: declare it in package.xml'


def test_optional_dependencies_stay_in_their_tool() -> None:
    """The SLAM tool's gtsam and evo: pinned apart, imported only inside its functions."""
    slam = requirements('requirements-slam.txt')
    assert {pip for pip, _ in OPTIONAL.values()} <= set(slam), sorted(slam)
    assert 'requirements-slam.txt' in open(os.path.join(REPO, 'requirements-dev.txt')).read()
    bad = []
    for top in RUNTIME_DIRS + TEST_DIRS:
        for dirpath, _, names in os.walk(os.path.join(REPO, top)):
            for name in sorted(n for n in names if n.endswith('.py')):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, REPO)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                module_level = set(map(id, tree.body))
                for node in ast.walk(tree):
                    mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                            [node.module] if isinstance(node, ast.ImportFrom) else [])
                    for mod in mods:
                        top_name = (mod or '').split('.')[0]
                        if top_name not in OPTIONAL:
                            continue
                        if rel not in OPTIONAL[top_name][1] or id(node) in module_level:
                            bad.append(f'{rel}:{node.lineno}: {mod}')
    assert not bad, f'optional dependencies imported outside the functions of their tool: {bad}'
