"""
The layer rule of doc/ARCHITECTURE.md, on every import statement (module level and in functions).

Checked: the ROS-free layers never import rclpy, ROS message packages or the training
package, and the runtime never imports training, tools or sim. Also the size limits.
"""
import ast
import os

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
        root = (os.path.join(REPO, 'training') if layer == 'training'
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


def violations() -> list[str]:
    bad = []
    for layer, files in layer_files().items():
        for path in files:
            rel = os.path.relpath(path, REPO)
            for line, module in imports_of(path):
                top = module.split('.')[0]
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


def test_layers_import_only_downwards():
    assert violations() == []


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


@pytest.mark.parametrize('layer', sorted(ALLOWED))
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
