"""
The layer rule of doc/ARCHITECTURE.md, on every import statement (module level and in functions).

Checked: the ROS-free layers never import rclpy, ROS message packages or the training
package, and the runtime never imports training, tools or sim; within training, the workflow
stages import only the stages before them (`TRAINING_ALLOWED`), no module borrows another's
private name and the imports have no cycle; bench/ and experiments/ may import the package,
never the reverse, and the research experiments are not part of the installed package. Also
the size limits.
"""
import ast
import os
import runpy
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What each layer may import from this project (its own layer is always allowed).
ALLOWED = {
    'core': set(),
    'model': {'core'},
    'map': {'core'},
    'ros': {'core', 'model', 'map'},
    'sim': {'core'},
    'tools': {'core', 'model', 'map', 'ros', 'sim'},
    'training': {'core', 'model', 'map', 'sim', 'tools'},
    # beside the package, never installed: they may import all of it
    'bench': {'core', 'model', 'map', 'ros', 'sim', 'tools', 'training'},
    'experiments': {'core', 'model', 'map', 'ros', 'sim', 'tools', 'training'},
}
# Outside vpr_ros/ (training/ is installed as vpr_ros.training through the symlink).
TOP_LEVEL = {'training', 'bench', 'experiments'}
# Not part of the package: no layer of it imports them.
NOT_PACKAGE = {'bench', 'experiments'}
# Within training/: the workflow stages, each importing only the ones it builds on.
TRAINING_ALLOWED = {
    'data': set(),                          # recordings -> TB-Places folders, labels, pairs
    'fit': {'data'},                        # vpr-train
    'eval': {'data'},                       # vpr-eval (and its loop mode)
    'ship': {'data', 'fit', 'eval'},        # vpr-export: checkpoints in, loop calibration
    'demo': {'data', 'fit', 'ship', 'eval'},  # vpr-train-demo: the whole workflow
}
ROS_FREE = {'core', 'model', 'map', 'sim', 'training'}
ROS_PACKAGES = {
    'rclpy', 'rcl_interfaces', 'builtin_interfaces', 'std_msgs', 'sensor_msgs', 'geometry_msgs',
    'nav_msgs', 'visualization_msgs', 'diagnostic_msgs', 'std_srvs', 'launch', 'launch_ros',
    'ament_index_python', 'rosidl_runtime_py', 'rmw_implementation',
}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def layer_files() -> dict[str, list[str]]:
    """Every Python module of each layer, by layer name."""
    out = {}
    for layer in ALLOWED:
        root = (os.path.join(REPO, layer) if layer in TOP_LEVEL
                else os.path.join(REPO, 'vpr_ros', layer))
        files = []
        for dirpath, _, names in os.walk(root):
            files += [os.path.join(dirpath, n) for n in names if n.endswith('.py')]
        out[layer] = sorted(files)
    return out


def imports_of(path: str) -> list[tuple[int, str]]:
    """Every absolute module name imported by the file, with its line."""
    tree = ast.parse(open(path).read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f'{path}:{node.lineno}: relative import; use absolute names'
            found.append((node.lineno, node.module or ''))
    return found


def target_layer(module: str) -> str | None:
    parts = module.split('.')
    if parts[0] != 'vpr_ros' or len(parts) < 2:
        return None
    return parts[1]


def file_violations(layer: str, path: str) -> list[str]:
    """List the imports of one file of a layer that break the layer table."""
    bad = []
    rel = os.path.relpath(path, REPO)
    for line, module in imports_of(path):
        top = module.split('.')[0]
        if top in NOT_PACKAGE and layer not in NOT_PACKAGE:
            bad.append(f'{rel}:{line}: the package imports {top}/ ({module}), which is '
                       'not installed')
        if layer in ROS_FREE and top in ROS_PACKAGES:
            bad.append(f'{rel}:{line}: the {layer} layer imports ROS ({module})')
        if top == 'training':
            bad.append(f'{rel}:{line}: plain `training` import ({module}); '
                       'the package is vpr_ros.training')
        target = target_layer(module)
        if target is None or target == layer:
            continue
        if target not in ALLOWED[layer]:
            bad.append(f'{rel}:{line}: {layer} may not import {target} ({module})')
    return bad


def violations() -> list[str]:
    return [b for layer, files in layer_files().items() for path in files
            for b in file_violations(layer, path)]


def test_layers_import_only_downwards():
    assert violations() == []


# ----------------------------------------------------------------------------- within training

def module_files() -> dict[str, str]:
    """Every module of the package by dotted name (training/ as vpr_ros.training), and its file."""
    out = {}
    for layer, files in layer_files().items():
        if layer in NOT_PACKAGE:
            continue
        base = os.path.join(REPO, 'training' if layer == 'training' else 'vpr_ros')
        prefix = 'vpr_ros.training' if layer == 'training' else 'vpr_ros'
        for path in files:
            parts = os.path.relpath(path, base)[:-3].split(os.sep)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            out['.'.join([prefix, *parts])] = path
    return out


def import_targets(path: str, known: dict[str, str]) -> list[tuple[int, str]]:
    """List the project modules a file imports (`from pkg import mod` imports pkg.mod)."""
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            subs = [f'{node.module}.{a.name}' for a in node.names]
            found += [(node.lineno, m) for m in subs if m in known]
            if not all(m in known for m in subs):
                found.append((node.lineno, node.module))
    return found


def stage_of(module: str) -> str | None:
    """Name the workflow stage (data, fit, ...) of a vpr_ros.training module; None outside."""
    parts = module.split('.')
    return parts[2] if len(parts) > 3 and parts[:2] == ['vpr_ros', 'training'] else None


def stage_violations(name: str, path: str, known: dict[str, str]) -> list[str]:
    """List the imports of one training module that break `TRAINING_ALLOWED`."""
    rel, stage = os.path.relpath(path, REPO), stage_of(name)
    if stage not in TRAINING_ALLOWED and name not in (
            'vpr_ros.training', *(f'vpr_ros.training.{s}' for s in TRAINING_ALLOWED)):
        return [f'{rel}: a training module outside the workflow stages']
    bad = []
    for line, module in import_targets(path, known):
        target = stage_of(module)
        if module.startswith('vpr_ros.training') and target != stage and (
                stage is None or target not in TRAINING_ALLOWED[stage]):
            bad.append(f'{rel}:{line}: training.{stage} may not import {module}')
    return bad


def test_training_stages_import_only_earlier_stages():
    known = module_files()
    assert {stage_of(n) for n in known} >= set(TRAINING_ALLOWED)
    assert [b for n, p in known.items() if n.startswith('vpr_ros.training')
            for b in stage_violations(n, p, known)] == []


def test_the_stage_guard_catches_an_upward_import(tmp_path):
    known = module_files()
    bad = tmp_path / 'bad.py'
    bad.write_text('def f():\n    from vpr_ros.training.fit import train\n'
                   '    from vpr_ros.training.data.labels import load_labels\n')
    found = stage_violations('vpr_ros.training.eval.bad', str(bad), known)
    assert len(found) == 1 and 'vpr_ros.training.fit.train' in found[0], found
    assert stage_violations('vpr_ros.training.research', str(bad), known)


def _private(name: str) -> bool:
    return name.startswith('_') and not name.startswith('__')


def private_borrowing(path: str) -> list[str]:
    """Private names of other project modules this file uses (imported or as attributes)."""
    tree = ast.parse(open(path).read(), path)
    bad, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'vpr_ros':
            bad += [f'{node.lineno}: from {node.module} import {a.name}' for a in node.names
                    if _private(a.name) or any(_private(p) for p in node.module.split('.'))]
            bound |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split('.')[0] == 'vpr_ros':
                    bound.add(a.asname or 'vpr_ros')
                    if any(_private(p) for p in a.name.split('.')):
                        bad.append(f'{node.lineno}: import {a.name}')
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                bad.append(f'{node.lineno}: {ast.unparse(node)}')
    return bad


@pytest.mark.parametrize('layer', ['training', 'bench', 'experiments'])
def test_no_module_borrows_a_private_name(layer):
    """A helper two modules share is public in one home; nothing reaches for `_name`."""
    bad = [f'{os.path.relpath(path, REPO)}:{b}' for path in layer_files()[layer]
           for b in private_borrowing(path)]
    assert bad == []


def test_the_private_name_guard_catches_borrowing(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('from vpr_ros.training.eval import evaluate as ev\n'
                   'from vpr_ros.training.eval.evaluate import _load\n'
                   'import vpr_ros.training.data.labels\n'
                   'class A:\n    def f(self):\n        return self._x, ev.evaluate\n'
                   'def g():\n    return ev._score, vpr_ros.training.data.labels._meta_side\n')
    found = private_borrowing(str(bad))
    assert [b.split(':')[0] for b in found] == ['2', '8', '8'], found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles of a module graph (depth-first search), each as a path back to its start."""
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_training_imports_have_no_cycle():
    """Modules, not a tangle: no chain of imports (also inside functions) leads back."""
    known = module_files()
    graph = {name: {m for _, m in import_targets(path, known)
                    if m.startswith('vpr_ros.training') and m != name}
             for name, path in known.items() if name.startswith('vpr_ros.training')}
    assert len(graph) > 30 and find_cycles(graph) == []
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [['a', 'b', 'c', 'a']]


# ----------------------------------------------------------------------------- what is installed

def setup_kwargs() -> dict:
    """Return what setup.py passes to setuptools.setup (run with a stand-in recording it)."""
    captured: dict = {}
    fake = types.ModuleType('setuptools')
    fake.setup = lambda **kw: captured.update(kw)
    saved = sys.modules.get('setuptools')
    sys.modules['setuptools'] = fake
    try:
        runpy.run_path(os.path.join(REPO, 'setup.py'))
    finally:
        if saved is None:
            del sys.modules['setuptools']
        else:
            sys.modules['setuptools'] = saved
    return captured


def test_setup_installs_every_package_and_no_experiment():
    """Every folder with an __init__.py under vpr_ros/ (training's stages too) and no other."""
    found = set()
    for dirpath, _, names in os.walk(os.path.join(REPO, 'vpr_ros'), followlinks=True):
        if '__init__.py' in names:
            found.add(os.path.relpath(dirpath, REPO).replace(os.sep, '.'))
    packages = set(setup_kwargs()['packages'])
    assert {f'vpr_ros.training.{s}' for s in TRAINING_ALLOWED} <= found
    assert packages == found
    assert not {p.split('.')[0] for p in packages} & NOT_PACKAGE


def test_console_scripts_keep_their_names_and_resolve():
    known = module_files()
    scripts = {}
    for entry in setup_kwargs()['entry_points']['console_scripts']:
        name, target = (x.strip() for x in entry.split('='))
        scripts[name] = target
        module, func = target.split(':')
        assert module in known, entry
        tree = ast.parse(open(known[module]).read())
        assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, entry
    assert {'vpr_node', 'vpr-play', 'vpr-sim', 'vpr-extract-bag', 'vpr-labels', 'vpr-train',
            'vpr-eval', 'vpr-export', 'vpr-train-demo'} <= set(scripts)


def test_makefile_modules_exist():
    """`make train-demo` and friends run `python -m MODULE`: every such module must exist."""
    import re
    known = module_files()
    modules = re.findall(r'-m (vpr_ros[\w.]*)', open(os.path.join(REPO, 'Makefile')).read())
    assert 'vpr_ros.training.demo.train_demo' in modules
    assert [m for m in modules if m not in known] == []


def test_experiments_are_not_in_the_installed_package():
    """Research scripts live in experiments/ only: no vpr_ros.training module of their name."""
    import importlib.util
    exp = sorted(n[:-3] for n in os.listdir(os.path.join(REPO, 'experiments'))
                 if n.endswith('.py') and n != '__init__.py')
    assert {'collapse_experiment', 'ship_model'} <= set(exp)
    stems = {os.path.basename(p)[:-3] for p in layer_files()['training']}
    assert not stems & set(exp)
    for name in exp:
        for stage in ('', *(f'.{s}' for s in TRAINING_ALLOWED)):
            assert importlib.util.find_spec(f'vpr_ros.training{stage}.{name}') is None, name


def test_every_layer_has_modules():
    files = layer_files()
    for layer in ALLOWED:
        assert files[layer], f'layer {layer} has no module'
    flat = [n for n in os.listdir(os.path.join(REPO, 'vpr_ros')) if n.endswith('.py')]
    assert flat == ['__init__.py'], f'modules outside a layer folder: {flat}'


def test_the_guard_catches_a_violation(tmp_path):
    """The checker itself must fail on a core module that imports rclpy or training."""
    bad = tmp_path / 'bad.py'
    bad.write_text('def f():\n    import rclpy\n    from vpr_ros.training import train\n')
    found = imports_of(str(bad))
    assert (2, 'rclpy') in found and (3, 'vpr_ros.training') in found
    assert target_layer('vpr_ros.training') not in ALLOWED['core']
    assert len(file_violations('core', str(bad))) == 2


def test_the_package_never_imports_bench_or_experiments(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('import experiments.ship_model\nfrom bench import bench_core\n'
                   'from vpr_ros.training.eval import evaluate\n')
    for layer in ('training', 'tools'):
        assert len(file_violations(layer, str(bad))) == 2 + (layer == 'tools')
    assert file_violations('experiments', str(bad)) == []
    assert file_violations('bench', str(bad)) == []


@pytest.mark.parametrize('layer', sorted(set(ALLOWED) - {'bench'}))  # bench: measuring scripts
def test_module_and_function_size(layer):
    too_long = []
    for path in layer_files()[layer]:
        text = open(path).read()
        rel = os.path.relpath(path, REPO)
        n = text.count('\n')
        if n > MAX_MODULE_LINES:
            too_long.append(f'{rel}: {n} lines')
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f'{rel}:{node.lineno} {node.name}(): {length} lines')
    assert too_long == []
