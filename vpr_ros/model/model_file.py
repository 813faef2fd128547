"""
The model file: one file that fully describes a trained encoder, read safely.

Written by training's export, read by the node. It is a ``torch.save`` dict holding only plain
data and tensors, so it is read with ``torch.load(weights_only=True)``: a file carrying code
is refused, never executed. Fields (all required, no others allowed)::

    format      'vpr_ros.model'
    version     1 or 2
    base        (version 2 only) None, or the full sha256 of the backbone's ImageNet weights
                file as pinned in the backbone table (backbones.py)
    spec        backbone, pooling ('gem' | 'avg'), gem_p, image_size [h, w],
                mean [3], std [3], whitening_dim (int or None)
    output_dim  descriptor dimension the network produces
    whitening   None or {'mean': (D,) tensor, 'proj': (output_dim, D) tensor}
    state_dict  the network's weights (trunk + pooling; whitening kept apart above)
    provenance  free JSON-able dict: loss, data, metrics, date, ...

With ``base`` set, ``state_dict`` holds only the tensors that differ from the network built on
those ImageNet weights (a model that fine-tuned the last blocks: 3 MB instead of 9 MB). The
reader builds the net from the hash-checked ImageNet file (imagenet.py, ``weights_only``) and
overlays the stored tensors; a base that is not the table's, a stored key the net does not have
or a wrong shape is refused. Files without ``base`` are written as version 1, which older
readers still read. The delta logic lives in ``model_delta.py``.

Only a regular file of at most MAX_MODEL_BYTES is read or hashed (a FIFO or a link to a device
is refused before a byte is read). Its sha256 is the model's fingerprint, recorded in each map's
manifest. A name of the shipped
model table (``shipped.py``, e.g. ``gcl_garden``) is read from the package's data folder and
refused unless its sha256 is the pinned one, checked before anything is unpickled.
"""
import dataclasses
import hashlib
import io
import json
import pickle
from typing import Any

import torch

from vpr_ros.core.atomic_io import read_regular, sha256_file, write_atomic
from vpr_ros.core.errors import ModelFileError, VPRError
from vpr_ros.model import model_delta, shipped
from vpr_ros.model.network import ModelSpec, VPRNet

FORMAT = 'vpr_ros.model'
VERSION = 2
TOP_FIELDS = ('format', 'version', 'spec', 'output_dim', 'whitening', 'state_dict',
              'provenance')
TOP_FIELDS_V2 = TOP_FIELDS + ('base',)
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ModelSpec))
WHITENING_FIELDS = ('mean', 'proj')
# A ResNet-152 trunk with 2048x2048 whitening is under 300 MB; no model file comes near this.
MAX_MODEL_BYTES = 1 << 30


def file_fingerprint(path: str) -> str:
    """Sha256 hex digest of the file at ``path``: the model's identity for maps."""
    if shipped.is_shipped_name(path):
        path = shipped.path_and_sha256(path)[0]
    try:
        return sha256_file(path, max_bytes=MAX_MODEL_BYTES)
    except OSError as e:
        raise ModelFileError(f'cannot read model file {path}: {e}') from e


def save_model(path: str, net: VPRNet, provenance: dict | None = None,
               delta_from_imagenet: bool = False) -> str:
    """
    Write ``net`` and its ``provenance`` to ``path`` atomically; return the fingerprint.

    ``delta_from_imagenet`` stores only the tensors that differ from the backbone's pinned
    ImageNet weights (version 2, ``base``). It is the caller's choice, not automatic: such a
    file is no longer self-contained, it needs the ImageNet file (hub cache, ``make setup``)
    wherever it is loaded; the built-in model needs that file anyway, so a shipped model is
    stored this way.
    """
    try:
        # Round trip through JSON: refuses what is not JSON-able, turns tuples into lists.
        provenance = json.loads(json.dumps(provenance or {}))
    except (TypeError, ValueError) as e:
        raise ModelFileError(f'provenance must be JSON-able: {e}') from e
    if not isinstance(provenance, dict):
        raise ModelFileError('provenance must be a dict')
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()
             if not k.startswith('whitening.')}
    whitening = None
    if net.whitening is not None:
        whitening = {'mean': net.whitening.mean.detach().cpu().clone(),
                     'proj': net.whitening.proj.detach().cpu().clone()}
    base = None
    if delta_from_imagenet:
        state, base = model_delta.delta_state(net, state)
    obj = {
        'format': FORMAT,
        'version': 1 if base is None else VERSION,
        'spec': net.spec.to_dict(),
        'output_dim': int(net.dim),
        'whitening': whitening,
        'state_dict': state,
        'provenance': provenance,
    }
    if base is not None:
        obj['base'] = base
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _check_fields(where: str, d: Any, fields: tuple[str, ...]) -> None:
    if not isinstance(d, dict):
        raise ModelFileError(f'{where} must be a dict, got {type(d).__name__}')
    missing = [f for f in fields if f not in d]
    if missing:
        raise ModelFileError(f'{where} is missing field(s): {", ".join(missing)}')
    unknown = [str(f) for f in d if f not in fields]
    if unknown:
        raise ModelFileError(f'{where} has unknown field(s): {", ".join(unknown)}')


def _unpickler_reason(e: Exception) -> str:
    """Pick the useful line of torch's long weights-only message (the refused global)."""
    text = str(e)
    lines = [ln.strip() for ln in text.split('WeightsUnpickler error:', 1)[-1].splitlines()]
    for line in lines:
        if 'GLOBAL' in line or 'Unsupported' in line:
            return line
    return text.splitlines()[0][:200] if text else type(e).__name__


def _read(path: str, expected_sha256: str | None = None) -> tuple[dict, str]:
    """Read and safely unpickle the file; return the raw dict and its sha256."""
    try:
        data = read_regular(path, MAX_MODEL_BYTES)
    except OSError as e:
        raise ModelFileError(f'cannot read model file {path}: {e}') from e
    sha = hashlib.sha256(data).hexdigest()
    # The hash of the very bytes unpickled below, compared before torch sees them.
    if expected_sha256 is not None and sha != expected_sha256:
        raise ModelFileError(f'model file {path} has sha256 {sha}, expected {expected_sha256} '
                             f'(the pinned hash of this shipped model): refusing to load it. '
                             f'Reinstall the package to get the genuine file.')
    try:
        obj = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside torch's allow-list before calling it.
        raise ModelFileError(f'model file {path} refused: it holds objects other than tensors '
                             f'and plain data (unsafe or not a vpr_ros model file): '
                             f'{_unpickler_reason(e)}') from e
    except Exception as e:  # zip/pickle/storage errors of a truncated or damaged file
        raise ModelFileError(f'model file {path} is corrupt or not a torch file: '
                             f'{type(e).__name__}: {e}') from e
    return obj, sha


def _check_header(obj: Any, path: str) -> int:
    """Check format, version and the fields that version has; return the version."""
    if not isinstance(obj, dict) or 'version' not in obj:
        _check_fields(f'model file {path}', obj, TOP_FIELDS)  # names what is missing
    version = obj.get('version')
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise ModelFileError(f'model file {path}: field version {version!r} is not supported '
                             f'(this reader knows 1..{VERSION})')
    _check_fields(f'model file {path}', obj, TOP_FIELDS if version == 1 else TOP_FIELDS_V2)
    if obj['format'] != FORMAT:
        raise ModelFileError(f'model file {path}: field format is {obj["format"]!r}, '
                             f'expected {FORMAT!r}')
    return version


def _build(obj: Any, path: str) -> tuple[VPRNet, dict]:
    version = _check_header(obj, path)
    _check_fields(f'model file {path}: spec', obj['spec'], SPEC_FIELDS)
    try:
        spec = ModelSpec(**obj['spec'])
    except (VPRError, TypeError) as e:
        raise ModelFileError(f'model file {path}: invalid spec: {e}') from e
    provenance = obj['provenance']
    if not isinstance(provenance, dict):
        raise ModelFileError(f'model file {path}: field provenance must be a dict')
    state = obj['state_dict']
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(f'model file {path}: field state_dict must map names to tensors')
    base = obj['base'] if version >= 2 else None
    if base is None:
        net = VPRNet(spec, pretrained=False)
    else:
        net, state = model_delta.overlay(spec, base, state, path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f'model file {path}: state_dict does not fit {spec.backbone}: '
                             f'{e}') from e
    whitening = obj['whitening']
    if whitening is not None:
        _check_fields(f'model file {path}: whitening', whitening, WHITENING_FIELDS)
        if not all(isinstance(whitening[k], torch.Tensor) for k in WHITENING_FIELDS):
            raise ModelFileError(f'model file {path}: whitening mean/proj must be tensors')
        try:
            net.set_whitening(whitening['mean'], whitening['proj'])
        except VPRError as e:
            raise ModelFileError(f'model file {path}: field whitening: {e}') from e
    if spec.whitening_dim != (None if net.whitening is None else net.dim):
        raise ModelFileError(f'model file {path}: spec.whitening_dim {spec.whitening_dim} '
                             f'does not match field whitening')
    if obj['output_dim'] != net.dim:
        raise ModelFileError(f'model file {path}: field output_dim {obj["output_dim"]!r} '
                             f'does not match the network ({net.dim})')
    net.eval()
    return net, provenance


def load_model_and_fingerprint(path: str) -> tuple[VPRNet, dict, str]:
    """Like ``load_model`` plus the sha256 of exactly the bytes that were loaded."""
    expected = None
    if shipped.is_shipped_name(path):
        path, expected = shipped.path_and_sha256(path)
    obj, fingerprint = _read(path, expected)
    net, provenance = _build(obj, path)
    return net, provenance, fingerprint


def load_model(path: str) -> tuple[VPRNet, dict]:
    """
    Load a model file into a ``VPRNet`` (eval mode, CPU) and its provenance dict.

    ``path`` may also name a shipped model (``shipped.SHIPPED``), read hash-checked.
    """
    net, provenance, _ = load_model_and_fingerprint(path)
    return net, provenance
