"""
Hooks that change what `vpr-train` trains on: the epoch's pair sampler and the pair dataset.

An option that adds pairs of its own (``--lowtex-negatives``, `training.fit.lowtex`) is a hook:
`train(args, pair_hooks=...)` hands it a `PairSetup` (what it may replace, and what it may read
to build its pairs) and takes the `PairSetup` it returns, instead of the option reaching into
the trainer's run state. A hook's sampler must keep the `PairSampler` interface (`set_epoch`,
`state_dict`/`load_state_dict`, `counters`, `rank_pairs`), so checkpoints and resume hold.
"""
import dataclasses
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset, Sampler


@dataclasses.dataclass(frozen=True)
class PairSetup:
    """The sampler and dataset of the pair loader, and what a hook reads to add its pairs."""

    sampler: Sampler          # yields (anchor, partner, label) items, a PairSampler's interface
    dataset: Dataset          # serves those items: two images (or cached features) and a label
    image_paths: list[str]    # the training images (queries, then the map's when not within)
    spec: Any                 # the network's ModelSpec (input size, mean, std)
    net: Any                  # the VPRNet being trained (for the frozen-prefix cache)
    cut: int                  # the frozen-prefix cache cut, 0: the dataset serves images
    device: Any               # this rank's torch device
    rank: int
    main: bool                # rank 0: the one that prints
    seed: int


#: A hook takes the setup and returns it, with its own sampler and dataset where it adds pairs.
PairHook = Callable[[PairSetup], PairSetup]


def apply_pair_hooks(setup: PairSetup, hooks: Sequence[PairHook]) -> PairSetup:
    """Run the hooks in order, each on the previous one's result."""
    for hook in hooks:
        setup = hook(setup)
    return setup
