"""
The node's parameters: validation, the ROS descriptors and the generated docs of one table.

One table (param_table.py, re-exported here) feeds the ROS `ParameterDescriptor`s, the start-up
validation, `config/vpr.yaml` (a test checks they agree) and the parameter reference in the
docs, so a parameter cannot be declared in one place and forgotten in another. Validation is
ROS-free: a bad value raises `ParamError` naming the parameter and what it accepts, and the node
exits non-zero with that message instead of running with a value nobody meant.
"""
import difflib
import math
import os
import re
from typing import Any

from vpr_ros.core.detector import DetectorConfig
from vpr_ros.model import shipped
from vpr_ros.ros.param_table import BY_NAME, ParamSpec, SPECS

__all__ = ['BY_NAME', 'ParamError', 'ParamSpec', 'Params', 'SPECS',
           'declare_all', 'descriptor', 'launch_overrides', 'map_path',
           'markdown_table', 'node_map_dir', 'unknown_parameters', 'validate', 'yaml_text']


class ParamError(ValueError):
    """A parameter value outside what the node accepts; the message names the parameter."""



def validate(name: str, value: Any) -> Any:
    """Return `value` (normalised) or raise ParamError naming `name` and what it accepts."""
    spec = BY_NAME[name]
    t = spec.type_name
    bad = f'parameter {name!r}: {value!r} is not accepted; expected {spec.accepted()}'
    if t == 'bool':
        if not isinstance(value, bool):
            raise ParamError(bad)
        return value
    if t == 'string':
        if not isinstance(value, str):
            raise ParamError(bad)
        if spec.choices is not None and value not in spec.choices:
            raise ParamError(bad)
        return value
    if t == 'integer array':
        try:
            vals = [int(v) for v in value]
        except (TypeError, ValueError, OverflowError):
            raise ParamError(bad) from None
        # int() truncates: [224.5, 224] used to be taken as [224, 224] without a word.
        if len(vals) != 2 or any(isinstance(v, bool) or v != int(v) for v in value):
            raise ParamError(bad)
        if not all(spec.lo <= v <= spec.hi for v in vals):
            raise ParamError(bad)
        return vals
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(bad)
    if t == 'integer' and not isinstance(value, int):
        raise ParamError(bad)
    if t == 'double':
        value = float(value)
        if not math.isfinite(value):
            raise ParamError(bad)
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise ParamError(bad)
    if spec.min_on is not None and 0 < value < spec.min_on:
        raise ParamError(bad)
    return value


class Params:
    """Validated parameter values with attribute access (`params.top_k`)."""

    def __init__(self, values: dict[str, Any]) -> None:
        unknown = set(values) - set(BY_NAME)
        if unknown:
            raise ParamError(f'unknown parameter(s): {", ".join(sorted(unknown))}')
        merged = {s.name: s.default for s in SPECS}
        merged.update(values)
        self._values = {k: validate(k, v) for k, v in merged.items()}
        self._check_together()

    def _check_together(self) -> None:
        v = self._values
        size = v['image_size']
        if (size[0] == 0) != (size[1] == 0) or (0 < min(size) < 32):
            raise ParamError(f"parameter 'image_size': {size} is not accepted; expected "
                             "[0, 0] (the model's own) or two integers >= 32")
        if v['model_path'] and not shipped.is_shipped_name(v['model_path']) \
                and not os.path.isfile(os.path.expanduser(v['model_path'])):
            raise ParamError(f'parameter \'model_path\': file {v["model_path"]!r} does not '
                             "exist; expected a model file written by vpr-export, a shipped "
                             f"model ({', '.join(shipped.SHIPPED)}) or '' for the built-in "
                             'model')
        # a ~user that does not expand, an unknown {placeholder}: refused here
        map_path(node_map_dir(v['map_dir'], '/', DEFAULT_NODE_NAME))

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__['_values'][name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def with_changes(self, changes: dict[str, Any]) -> 'Params':
        """Return new Params with some values changed (validated), for live updates."""
        return Params({**self._values, **changes})

    @property
    def map_path(self) -> str:
        """
        The absolute map directory ('' for memory only): see `map_path`.

        `declare_all` fills map_dir's placeholders with the node's namespace and name; values
        built without a node resolve them as the default node (`/vpr_node`).
        """
        return map_path(node_map_dir(self.map_dir, '/', DEFAULT_NODE_NAME))

    def detector_config(self) -> DetectorConfig:
        """Build the core's DetectorConfig: each table entry with a `field` sets that field."""
        return DetectorConfig(**{s.field: self._values[s.name] for s in SPECS if s.field})


DEFAULT_NODE_NAME = 'vpr_node'
MAP_DIR_FIELDS = ('namespace', 'name')
_PLACEHOLDER = re.compile(r'\{([^{}]*)\}')


def node_map_dir(map_dir: str, namespace: str, name: str) -> str:
    """
    Fill map_dir's `{namespace}` and `{name}` with the node's own; ParamError for another one.

    The default map_dir holds both, so two robots started at their defaults under /robot1 and
    /robot2 (or two nodes under different names) never share a map: they used to share
    `~/.ros/vpr_ros/map`, and the second exited 'in use'. The root namespace fills in as
    nothing (`~/.ros/vpr_ros/vpr_node/map`); a nested one as its path (`fleet/robot1`).
    """
    fields = {'namespace': namespace.strip('/'), 'name': name}

    def fill(m: re.Match) -> str:
        if m.group(1) not in fields:
            raise ParamError(f"parameter 'map_dir': {map_dir!r} has the placeholder "
                             f"{m.group(0)!r}; expected only "
                             f'{" and ".join("{" + f + "}" for f in MAP_DIR_FIELDS)}')
        return fields[m.group(1)]
    return _PLACEHOLDER.sub(fill, map_dir)


def map_path(map_dir: str) -> str:
    """
    Resolve map_dir to an absolute path ('' for memory only); ParamError for an unknown ~user.

    `~nosuchuser/map` used to stay unexpanded and became a directory called `~nosuchuser` in the
    working directory. Relative paths are resolved against the working directory now, once,
    so the node logs and uses one absolute path (launch starts nodes wherever it runs).
    """
    if not map_dir:
        return ''
    path = os.path.expanduser(map_dir)
    if path.startswith('~'):
        user = path[1:].split(os.sep, 1)[0]
        raise ParamError(f"parameter 'map_dir': {map_dir!r} names the home of user {user!r}, "
                         "which does not exist; expected an absolute path, ~/..., ~user/... of "
                         "an existing user, or '' to keep the map in memory only")
    return os.path.abspath(path)


# ROS's own parameters and prefixes, set by rclpy or launch on every node: never misspellings.
ROS_PARAMETERS = ('use_sim_time', 'start_type_description_service')
ROS_PARAMETER_PREFIXES = ('qos_overrides.',)


def unknown_parameters(names) -> list[str]:
    """
    Name the names that are not parameters of the table, each with close matches suggested.

    For the node's start-up warning: a misspelled name in a params file (`tpo_k: 3`) used to be
    ignored without a word while the default ran. ROS's own parameters are not reported.
    """
    out = []
    for name in names:
        if name in BY_NAME or name in ROS_PARAMETERS or name.startswith(ROS_PARAMETER_PREFIXES):
            continue
        close = difflib.get_close_matches(name, list(BY_NAME), n=3, cutoff=0.6)
        hint = f' (did you mean {" or ".join(repr(c) for c in close)}?)' if close else ''
        out.append(f'{name!r}{hint}')
    return out


def launch_overrides(arguments: dict[str, str],
                     declared) -> tuple[dict[str, Any], list[str]]:
    """
    Split launch arguments into validated parameter values and unknown names (with hints).

    `ros2 launch vpr_ros vpr.launch.py top_k:=5.5` used to be ignored without a word (launch
    drops arguments it does not declare) and the node ran with top_k 5. Given the launch
    context's arguments and the names the launch file declares itself, arguments naming a
    parameter become {name: value} (parsed as YAML, like -p NAME:=VALUE, then validated: 5.5
    for an integer raises ParamError naming it), ROS's own (use_sim_time) pass through, and the
    rest are returned as `unknown_parameters` strings for a warning (an including launch file
    may have arguments of its own, so they are not refused).
    """
    import yaml

    out, unknown = {}, []
    for name, text in arguments.items():
        if name in declared:
            continue
        if name not in BY_NAME and name not in ROS_PARAMETERS:
            unknown.append(name)
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        out[name] = validate(name, value) if name in BY_NAME else value
    Params({k: v for k, v in out.items() if k in BY_NAME})  # together: map_dir, image_size
    return out, unknown_parameters(unknown)


def descriptor(spec: ParamSpec):
    """Build the ParameterDescriptor of a spec (range, read-only, description)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    d = ParameterDescriptor(name=spec.name, description=spec.description,
                            read_only=spec.read_only)
    if spec.choices is not None:
        d.additional_constraints = spec.accepted()
    if spec.lo is not None and spec.hi is not None:
        if spec.type_name == 'double':
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.lo),
                                                         to_value=float(spec.hi), step=0.0)]
        elif spec.type_name == 'integer':
            d.integer_range = [IntegerRange(from_value=int(spec.lo), to_value=int(spec.hi),
                                            step=1)]
        else:
            d.additional_constraints = spec.accepted()
    return d


def declare_all(node) -> Params:
    """
    Declare every parameter on an rclpy node and return the validated values.

    rclpy's own range/type checks raise on declaration; both those and ours become a
    ParamError naming the parameter and what it accepts, which `main` prints before exiting.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    values = {}
    for spec in SPECS:
        default = list(spec.default) if isinstance(spec.default, list) else spec.default
        try:
            p = node.declare_parameter(spec.name, default, descriptor(spec))
        except InvalidParameterTypeException as err:
            raise ParamError(f'parameter {spec.name!r} has the wrong type ({err}); expected '
                             f'{spec.accepted()}'
                             + (' (write 1.0, not 1)' if spec.type_name == 'double' else '')
                             ) from None
        except InvalidParameterValueException as err:
            raise ParamError(f'parameter {spec.name!r}: value out of range ({err}); expected '
                             f'{spec.accepted()}') from None
        val = p.value
        if spec.type_name == 'integer array':
            val = list(val)
        values[spec.name] = val
    # the parameter keeps what was given; the node runs the directory of its own name
    values['map_dir'] = node_map_dir(values['map_dir'], node.get_namespace(), node.get_name())
    return Params(values)


def markdown_table() -> str:
    """README.md's parameter table, generated from the table (a test compares them)."""
    lines = ['| name | type | default | accepted | read-only | description |',
             '|---|---|---|---|---|---|']
    for s in SPECS:
        accepted = s.accepted() if s.choices is not None or s.lo is not None else ''
        lines.append(f'| `{s.name}` | {s.type_name} | `{s.default!r}` | {accepted} | '
                     f'{"yes" if s.read_only else "no"} | {s.description} |')
    return '\n'.join(lines) + '\n'


def yaml_text() -> str:
    """config/vpr.yaml generated from the table (the test compares the shipped file)."""
    lines = ['# vpr_node parameters (generated from vpr_ros/ros/params.py; descriptions and',
             '# ranges: `ros2 param describe /vpr_node <name>` or README.md).',
             '/**:', '  ros__parameters:']
    for s in SPECS:
        v = s.default
        if isinstance(v, bool):
            text = 'true' if v else 'false'
        elif isinstance(v, str):
            text = f'"{v}"'
        elif isinstance(v, list):
            text = '[' + ', '.join(str(x) for x in v) + ']'
        else:
            text = repr(v)
        if s.calibrated:  # set it and the model's calibrated point no longer applies
            lines.append(f"    # {s.name}: {text}  # {s.accepted()}; unset: the model's "
                         'calibrated point')
        else:
            lines.append(f'    {s.name}: {text}  # {s.accepted()}')
    return '\n'.join(lines) + '\n'
