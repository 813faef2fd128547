"""
Model files stored as a delta from the backbone's ImageNet weights (model file version 2).

A model fine-tuned on its last blocks shares most tensors with the ImageNet weights it started
from. Storing only the tensors that differ, with the full sha256 of those weights as ``base``,
makes a 9 MB MobileNetV2 file about 3 MB, small enough to ship in the package. Rebuilding goes
through the same safe path as the built-in model: the ImageNet file is hash-checked in full
against the backbone table and read with ``weights_only`` (imagenet.py), then the stored tensors
are laid over it. Anything that cannot be matched exactly is refused with the file named.
"""
import dataclasses

import torch

from vpr_ros.core.errors import ModelFileError
from vpr_ros.model import backbones
from vpr_ros.model.network import ModelSpec, VPRNet


def _pinned_sha256(backbone: str, where: str) -> str:
    """Return the table's full sha256 of ``backbone``'s ImageNet weights; refuse none."""
    sha = backbones.get(backbone).sha256
    if not sha:
        raise ModelFileError(f"{where}: the backbone table pins no full sha256 for {backbone}'s "
                             f'ImageNet weights, so a delta from them cannot be matched')
    return sha


def _reference(spec: ModelSpec) -> VPRNet:
    """Build the net a delta is taken from: ``spec`` on the hash-checked ImageNet weights."""
    return VPRNet(dataclasses.replace(spec, whitening_dim=None), pretrained=True)


def delta_state(net: VPRNet, state: dict) -> tuple[dict, str]:
    """Return the tensors of ``state`` that differ from ``net``'s reference, and the base."""
    base = _pinned_sha256(net.spec.backbone, 'cannot store a delta')
    ref = _reference(net.spec)
    if ref.weights_sha256 != base:
        raise ModelFileError(f'cannot store a delta: the ImageNet weights read have sha256 '
                             f'{ref.weights_sha256}, the table pins {base}')
    ref_state = ref.state_dict()
    # Exact equality: a tensor left out must come back bit for bit from the base.
    return {k: v for k, v in state.items()
            if k not in ref_state or ref_state[k].shape != v.shape
            or ref_state[k].dtype != v.dtype or not torch.equal(ref_state[k], v)}, base


def overlay(spec: ModelSpec, base: object, state: dict, path: str) -> tuple[VPRNet, dict]:
    """
    Build the reference net of a delta file and return it with the full state to load.

    Raises ``ModelFileError`` naming ``path`` for a base other than the table's sha256 of
    ``spec.backbone``, stored keys the network does not have, or shapes/dtypes that differ.
    """
    where = f'model file {path}'
    pinned = _pinned_sha256(spec.backbone, where)
    if base != pinned:
        raise ModelFileError(f'{where}: field base {base!r} is not the sha256 of the '
                             f'{spec.backbone} ImageNet weights this package pins ({pinned})')
    try:
        net = _reference(spec)
    except ModelFileError as e:
        raise ModelFileError(f'{where} is stored as a delta from the ImageNet weights, which '
                             f'could not be loaded: {e}') from e
    full = net.state_dict()
    unknown = sorted(k for k in state if k not in full)
    if unknown:
        raise ModelFileError(f'{where}: state_dict key(s) not in {spec.backbone}: '
                             + ', '.join(unknown[:5]) + (' ...' if len(unknown) > 5 else ''))
    for k, v in state.items():
        if v.shape != full[k].shape or v.dtype != full[k].dtype:
            raise ModelFileError(f'{where}: state_dict {k} is {tuple(v.shape)} {v.dtype}, '
                                 f'{spec.backbone} has {tuple(full[k].shape)} {full[k].dtype}')
    full.update(state)
    return net, full
