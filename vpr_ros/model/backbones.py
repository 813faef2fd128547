"""
The backbone table: one entry per supported CNN, the only place a backbone is described.

Each entry says how to build the torchvision classifier, where to cut it (its last conv block),
how many channels the cut trunk gives, which of the classifier's state_dict keys belong to the
trunk, and which ImageNet weights file it uses with that file's sha256. The network
(``network.py``), the ImageNet loader (``imagenet.py``) and the hub-cache seeder
(``weights.py``) all read this table, so they cannot disagree.

A ``sha256`` of ``None`` means the full hash of that file is not pinned here (it could not be
verified offline when the table was written): the loader then checks the 8-hex-digit prefix
torchvision puts in the file name and still unpickles with ``weights_only=True``. The shipped
default (``mobilenet_v2``) is pinned.
"""
from collections import OrderedDict
from dataclasses import dataclass
import re
from typing import Callable

from torch import nn
import torchvision

from vpr_ros.core.errors import VPRError

# A cut returns the trunk and its blocks (lists of the trunk's child names), the unit that
# ``VPRNet.set_trainable_blocks`` counts in.
Cut = Callable[[nn.Module], tuple[nn.Sequential, list[list[str]]]]


def _cut_mobilenet(model: nn.Module) -> tuple[nn.Sequential, list[list[str]]]:
    trunk = model.features
    return trunk, [[name] for name, _ in trunk.named_children()]


_RESNET_CHILDREN = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4')


def _cut_resnet(model: nn.Module) -> tuple[nn.Sequential, list[list[str]]]:
    names = list(_RESNET_CHILDREN)
    trunk = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))
    return trunk, [names[:4], ['layer1'], ['layer2'], ['layer3'], ['layer4']]


def _cut_densenet(model: nn.Module) -> tuple[nn.Sequential, list[list[str]]]:
    # features end with norm5 and torchvision applies a ReLU in forward(); keep it.
    children = OrderedDict(model.features.named_children())
    children['relu5'] = nn.ReLU(inplace=False)
    blocks = [['conv0', 'norm0', 'relu0', 'pool0']]
    blocks += [[f'denseblock{i}', f'transition{i}'] for i in (1, 2, 3)]
    blocks.append(['denseblock4', 'norm5', 'relu5'])
    return nn.Sequential(children), blocks


# torchvision's DenseNet checkpoints still use the old 'norm.1'-style keys (its loader renames
# them the same way before load_state_dict).
_OLD_DENSE_KEY = re.compile(
    r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$')


def _rename_dense_keys(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        m = _OLD_DENSE_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _identity(state: dict) -> dict:
    return state


@dataclass(frozen=True)
class Backbone:
    """One row of the table (see the module docstring)."""

    name: str
    constructor: Callable[..., nn.Module]  # torchvision.models.<name>, called with weights=None
    cut: Cut
    channels: int  # output channels of the cut trunk = descriptor dimension before whitening
    trunk_prefix: str  # classifier state_dict prefix of the trunk's keys ('' for resnets)
    head_prefix: str  # classifier keys that are not part of the trunk
    weights_file: str  # torchvision's ImageNet checkpoint file name
    sha256: str | None  # full sha256 of weights_file; None: only the name's prefix is checked
    fix_state: Callable[[dict], dict] = _identity  # old-checkpoint key renames
    size: int | None = None  # bytes of weights_file where pinned (with sha256)

    @property
    def max_bytes(self) -> int:
        """
        Largest weights file read for this row: twice its pinned size, else MAX_WEIGHTS_BYTES.

        Not the exact size: a doctored file of about the right size gets the hash check's
        message (which names both hashes); anything far beyond is refused unread.
        """
        return 2 * self.size if self.size else MAX_WEIGHTS_BYTES

    @property
    def url(self) -> str:
        """Torchvision's download address for ``weights_file``."""
        return 'https://download.pytorch.org/models/' + self.weights_file

    @property
    def hash_prefix(self) -> str:
        """The sha256 prefix torchvision writes into the file name (``name-<prefix>.pth``)."""
        return self.weights_file.rsplit('-', 1)[1].split('.', 1)[0]

    def build(self) -> nn.Module:
        """Build the full torchvision classifier, random init (weights are loaded apart)."""
        return self.constructor(weights=None)

    def to_trunk_state(self, state: dict) -> dict:
        """Map a classifier state_dict onto the trunk's parameter names."""
        state = self.fix_state(state)
        n = len(self.trunk_prefix)
        return {k[n:]: v for k, v in state.items()
                if k.startswith(self.trunk_prefix) and not k.startswith(self.head_prefix)}


# (trunk prefix, head prefix) of the classifier's state_dict, per family.
_STATE_PREFIXES = {_cut_mobilenet: ('features.', 'classifier.'), _cut_resnet: ('', 'fc.'),
                   _cut_densenet: ('features.', 'classifier.')}


def _row(name: str, cut: Cut, channels: int, weights_file: str, sha256: str | None = None,
         fix_state: Callable[[dict], dict] = _identity, size: int | None = None) -> Backbone:
    trunk_prefix, head = _STATE_PREFIXES[cut]
    return Backbone(name, getattr(torchvision.models, name), cut, channels, trunk_prefix, head,
                    weights_file, sha256, fix_state, size)


MOBILENET_V2_SHA256 = 'b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889'
MOBILENET_V2_BYTES = 14212972
# Unpinned rows: the largest torchvision file of the table (resnet152) is 241 MB.
MAX_WEIGHTS_BYTES = 512 << 20

TABLE: dict[str, Backbone] = {b.name: b for b in (
    _row('mobilenet_v2', _cut_mobilenet, 1280, 'mobilenet_v2-b0353104.pth', MOBILENET_V2_SHA256,
         size=MOBILENET_V2_BYTES),
    _row('resnet18', _cut_resnet, 512, 'resnet18-f37072fd.pth'),
    _row('resnet34', _cut_resnet, 512, 'resnet34-b627a593.pth'),
    _row('resnet50', _cut_resnet, 2048, 'resnet50-0676ba61.pth'),
    _row('resnet101', _cut_resnet, 2048, 'resnet101-63fe2227.pth'),
    _row('resnet152', _cut_resnet, 2048, 'resnet152-394f9c45.pth'),
    _row('densenet121', _cut_densenet, 1024, 'densenet121-a639ec97.pth',
         fix_state=_rename_dense_keys),
    _row('densenet161', _cut_densenet, 2208, 'densenet161-8d451a50.pth',
         fix_state=_rename_dense_keys),
)}

BACKBONES = tuple(TABLE)


def get(name: str) -> Backbone:
    """Look ``name`` up in the table; a clear error listing the supported ones otherwise."""
    try:
        return TABLE[name]
    except (KeyError, TypeError):
        raise VPRError(f'unknown backbone {name!r}; supported: ' + ', '.join(BACKBONES)) from None
