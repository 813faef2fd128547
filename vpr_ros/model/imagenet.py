"""
ImageNet weights of a backbone, loaded safely: hash checked in full, then ``weights_only``.

Torchvision's own loader (``weights=...``) calls ``torch.hub.load_state_dict_from_url`` with
``weights_only=False`` and checks a cached file's hash never (only a download's, and only its
8-digit prefix): a pickle planted at ``$TORCH_HOME/hub/checkpoints/<file>`` would run. Here the
file is read once into memory, the sha256 of exactly those bytes is compared with the backbone
table's, and only then are they unpickled, with ``weights_only=True``. Only a regular file of at
most the table's size is read (``atomic_io.read_regular``): a link to /dev/zero or a FIFO in the
hub cache is refused before a byte is read, instead of filling memory or hanging the start-up.
"""
import hashlib
import io
import os
import pickle
import socket
from urllib.parse import urlparse

import torch
from torch import nn

from vpr_ros.core.atomic_io import read_regular
from vpr_ros.core.errors import ModelFileError
from vpr_ros.model import backbones


def checkpoint_path(backbone: str) -> str:
    """Where torch's hub cache keeps (or would download) ``backbone``'s ImageNet weights."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', backbones.get(backbone).weights_file)


def _can_reach(url: str, timeout: float = 3.0) -> bool:
    """Quick TCP probe, so a missing download fails in seconds instead of hanging."""
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def expected_sha256(backbone: str) -> str:
    """Give the pinned full sha256, or the file name's prefix when the table pins none."""
    entry = backbones.get(backbone)
    return entry.sha256 or entry.hash_prefix


def check_sha256(path: str, actual: str, backbone: str) -> None:
    """Refuse weights whose sha256 is not the table's (the full hash, or its prefix)."""
    expected = expected_sha256(backbone)
    ok = actual == expected if len(expected) == 64 else actual.startswith(expected)
    if not ok:
        raise ModelFileError(
            f'ImageNet weights file {path} has sha256 {actual}, expected {expected} '
            f'({backbone}): refusing to load it. Delete the file and run `make setup` (or let '
            f'it download again) to get the genuine one.')


def _download(backbone: str, path: str) -> None:
    entry = backbones.get(backbone)
    if not _can_reach(entry.url):
        raise ModelFileError(
            f'ImageNet weights for {backbone} are not available offline ({path} is missing) '
            f'and {entry.url} cannot be reached. Put the file there, pass a local '
            f'checkpoint, or use pretrained=False (random init).')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        # Written to a temporary file and renamed only when its hash prefix checks out.
        torch.hub.download_url_to_file(entry.url, path, hash_prefix=entry.hash_prefix,
                                       progress=False)
    except (OSError, RuntimeError) as e:
        raise ModelFileError(f'could not download ImageNet weights for {backbone} '
                             f'from {entry.url}: {e}') from e


def read_state(backbone: str) -> tuple[dict, str]:
    """
    Read ``backbone``'s ImageNet classifier state_dict; return it and the file's sha256.

    Downloads into the hub cache when the file is missing and the server is reachable.
    Raises ``ModelFileError`` naming the file for a missing, mismatching or unsafe file.
    """
    path = checkpoint_path(backbone)
    if not os.path.exists(path):
        _download(backbone, path)
    try:
        data = read_regular(path, backbones.get(backbone).max_bytes)
    except OSError as e:
        raise ModelFileError(f'cannot read ImageNet weights file {path}: {e}') from e
    # The hash of the very bytes unpickled below: swapping the file after the check changes
    # nothing.
    sha = hashlib.sha256(data).hexdigest()
    check_sha256(path, sha, backbone)
    try:
        state = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(f'ImageNet weights file {path} refused: it holds objects other '
                             f'than tensors and plain data: {str(e).splitlines()[0][:200]}'
                             ) from e
    except Exception as e:  # truncated zip, bad storage: not a torch file
        raise ModelFileError(f'ImageNet weights file {path} is corrupt or not a torch file: '
                             f'{type(e).__name__}: {e}') from e
    if not isinstance(state, dict):
        raise ModelFileError(f'ImageNet weights file {path} holds a {type(state).__name__}, '
                             f'not a state_dict')
    return state, sha


def load_into(model: nn.Module, backbone: str) -> str:
    """Load the verified ImageNet weights into the classifier ``model``; return their sha256."""
    state, sha = read_state(backbone)
    try:
        model.load_state_dict(backbones.get(backbone).fix_state(state))
    except (RuntimeError, TypeError) as e:
        raise ModelFileError(f'ImageNet weights file {checkpoint_path(backbone)} does not fit '
                             f'{backbone}: {e}') from e
    return sha
