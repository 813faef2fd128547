"""
Model files shipped inside the package, selected by name (``model_path:=gcl_garden``).

Each entry names a file under ``vpr_ros/model/data/`` (installed with the package: setup.py
``package_data``) and pins its full sha256. The model file reader (model_file.py) resolves a
name here, compares the hash of the bytes it read with the pinned one before unpickling them,
then reads them like any model file (``weights_only``); a swapped or planted file is refused.
The shipped files are stored as deltas from the pinned ImageNet weights (model file version 2),
so loading one also needs those (``make setup`` seeds them), exactly as the built-in model does.

A name wins over a relative file of the same name; write ``./gcl_garden`` to load such a file.
"""
from dataclasses import dataclass
import os

from vpr_ros.core.errors import ModelFileError

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its file under DATA_DIR, the file's sha256 and a one-line summary."""

    file: str
    sha256: str
    summary: str


SHIPPED: dict[str, ShippedModel] = {
    'gcl_garden': ShippedModel(
        'gcl_garden_mnv2.pt',
        '209d70f1186750196d4da0c246fe2543f108d93130dd5c45616fd9a0e0d449e3',
        'MobileNetV2-GeM, last 2 blocks + GeM p trained with GCL on the simulated gardens '
        '(vpr-train-demo --large, seed 0), with its calibrated operating point'),
}


def is_shipped_name(value: object) -> bool:
    """Tell whether ``value`` is the name of a shipped model (not a path)."""
    return isinstance(value, str) and value in SHIPPED


def path_and_sha256(name: str) -> tuple[str, str]:
    """Return (installed file path, pinned sha256) of the shipped model ``name``."""
    try:
        entry = SHIPPED[name]
    except KeyError:
        raise ModelFileError(f'no shipped model {name!r}; shipped: '
                             + ', '.join(SHIPPED)) from None
    return os.path.join(DATA_DIR, entry.file), entry.sha256
