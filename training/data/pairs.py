"""
Training pairs from graded labels ψ, chosen without any descriptor (GCL paper, sec. 4.3).

Each pair is an anchor (a query image, a row of the ψ matrix) and a partner (a map image, a
column): with probability 0.5 a positive (ψ > 0.5), 0.25 a soft negative (0 < ψ ≤ 0.5) and 0.25
a hard negative (ψ = 0, drawn uniformly from all other partners). The label is ψ itself, or, in
binary mode for the contrastive-loss baseline, 1 for ψ > 0.5 and 0 otherwise. Within one set of
traverses (square, symmetric ψ) anchors and partners are the same images and an image is never
paired with itself.

Fallbacks, counted per epoch in `PairSampler.counters` so a run can report them:
* an anchor that lacks the drawn category (no positive, say) is swapped for a random anchor that
  has one: batches keep the 0.5 / 0.25 / 0.25 balance the paper relies on, at the price of
  anchors without positives being used only in negative pairs (`swapped_<category>`);
* a category no anchor has at all is replaced by the next one in the order positive → soft →
  hard, soft → hard → positive, hard → soft → positive (`fallback_<from>_to_<to>`).

The pairs of an epoch are a pure function of (seed, epoch), so a resumed run draws exactly the
pairs it would have drawn, and with `num_replicas` > 1 every rank draws the same epoch and keeps
its own slice (padded by wrapping, as DistributedSampler does): ranks never share a pair.
The sampler yields `(anchor, partner, label)` tuples that `PairImages` turns into tensors, so
the DataLoader's workers can stay alive across epochs while the sampler changes.
"""
from collections import Counter
from dataclasses import dataclass
import math
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset, Sampler

from vpr_ros.core.psi import POSITIVE_PSI

CATEGORIES = ('positive', 'soft', 'hard')
DEFAULT_PROBS = (0.5, 0.25, 0.25)
_FALLBACK_ORDER = {0: (1, 2), 1: (2, 0), 2: (1, 0)}


@dataclass
class EpochPairs:
    """All pairs of one epoch (every rank's): indices, labels, ψ and category (0/1/2)."""

    anchor: np.ndarray
    partner: np.ndarray
    label: np.ndarray
    psi: np.ndarray
    category: np.ndarray

    def __len__(self) -> int:
        return int(self.anchor.size)

    def subset(self, idx: np.ndarray) -> 'EpochPairs':
        return EpochPairs(self.anchor[idx], self.partner[idx], self.label[idx], self.psi[idx],
                          self.category[idx])


def _mask(n: int, keep: np.ndarray | Sequence[int] | None) -> np.ndarray:
    if keep is None:
        return np.ones(n, dtype=bool)
    keep = np.asarray(keep)
    if keep.dtype == bool:
        if keep.size != n:
            raise ValueError(f'mask of {keep.size} for {n} items')
        return keep.copy()
    m = np.zeros(n, dtype=bool)
    m[keep.astype(np.int64)] = True
    return m


class PairSampler(Sampler):
    """Seeded, epoch-dependent pair sampler; yields (anchor, partner, label) for this rank."""

    def __init__(self, psi: sp.spmatrix, within: bool = False,
                 probs: Sequence[float] = DEFAULT_PROBS, binary: bool = False,
                 pairs_per_epoch: int | None = None, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, anchors=None, partners=None) -> None:
        """
        Prepare per-anchor candidate lists once, so each epoch is drawn with numpy only.

        psi: (n_anchors, n_partners) sparse ψ; absent entries are hard negatives.
        within: anchors and partners are the same images (psi square), self-pairs excluded.
        anchors / partners: indices or boolean masks of usable images (e.g. readable ones);
        pairs_per_epoch: pairs over all ranks (default: one per usable anchor).
        """
        super().__init__()
        csr = sp.csr_matrix(psi, dtype=np.float32, copy=True)
        csr.eliminate_zeros()
        csr.sort_indices()
        n_a, n_p = csr.shape
        if within and n_a != n_p:
            raise ValueError(f'within-set ψ must be square, got {csr.shape}')
        if len(probs) != 3 or min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(f'probs must be three non-negative weights, got {probs}')
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank {rank} outside 0..{num_replicas - 1}')
        self.within = bool(within)
        self.probs = np.asarray(probs, dtype=np.float64) / float(sum(probs))
        self.binary = bool(binary)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.counters: Counter = Counter()
        self.shape = (n_a, n_p)
        self._anchor_ok = _mask(n_a, anchors)
        self._partner_ok = _mask(n_p, partners)
        self._valid_anchors = np.flatnonzero(self._anchor_ok)
        self._valid_partners = np.flatnonzero(self._partner_ok)
        if self._valid_anchors.size == 0 or self._valid_partners.size == 0:
            raise ValueError('no usable anchor or partner image')
        # Row-major sorted keys of every stored (ψ > 0) entry: membership tests for hard
        # negatives by binary search, never a dense row.
        rows = np.repeat(np.arange(n_a, dtype=np.int64), np.diff(csr.indptr))
        self._nz_keys = rows * n_p + csr.indices.astype(np.int64)
        self._csr = csr
        keep = self._partner_ok[csr.indices] & self._anchor_ok[rows]
        pos = keep & (csr.data > POSITIVE_PSI)
        soft = keep & (csr.data <= POSITIVE_PSI)
        self._lists = [self._ragged(rows[m], csr.indices[m], csr.data[m], n_a)
                       for m in (pos, soft)]
        n_pos = np.diff(self._lists[0][0])
        n_soft = np.diff(self._lists[1][0])
        # partners with ψ > 0 (usable ones), plus the anchor itself within one set
        n_nonzero = np.bincount(rows[keep], minlength=n_a)
        self_usable = (self._partner_ok & self._anchor_ok) if within else np.zeros(n_a, bool)
        n_hard = self._valid_partners.size - n_nonzero - self_usable.astype(np.int64)
        counts = np.stack([n_pos, n_soft, n_hard], axis=1)
        counts[~self._anchor_ok] = 0
        self._counts = counts
        self._has = [np.flatnonzero(counts[:, c] > 0) for c in range(3)]
        if all(h.size == 0 for h in self._has):
            raise ValueError('no anchor has any partner to pair with')
        n_default = self._valid_anchors.size
        self.pairs_per_epoch = int(pairs_per_epoch or n_default)
        if self.pairs_per_epoch <= 0:
            raise ValueError('pairs_per_epoch must be positive')

    @staticmethod
    def _ragged(rows, cols, vals, n_rows):
        ptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=ptr[1:])
        return ptr, cols.astype(np.int64), vals.astype(np.float32)

    # ------------------------------------------------------------------ DistributedSampler API
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairs the next iteration yields (as DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(math.ceil(self.pairs_per_epoch / self.num_replicas))

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        pairs = self.rank_pairs()
        for a, b, y in zip(pairs.anchor.tolist(), pairs.partner.tolist(), pairs.label.tolist()):
            yield a, b, y

    def state_dict(self) -> dict:
        """All a resumed run needs to draw the same pairs: the pairs are f(seed, epoch)."""
        return {'seed': self.seed, 'epoch': self.epoch, 'pairs_per_epoch': self.pairs_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state['seed'])
        self.epoch = int(state['epoch'])
        self.pairs_per_epoch = int(state.get('pairs_per_epoch', self.pairs_per_epoch))

    # ------------------------------------------------------------------ drawing
    def rank_pairs(self, epoch: int | None = None) -> EpochPairs:
        """Return this rank's slice: the epoch padded to a multiple of the ranks, strided."""
        pairs = self.epoch_pairs(epoch)
        total = len(self) * self.num_replicas
        idx = np.arange(total) % len(pairs)
        return pairs.subset(idx[self.rank::self.num_replicas])

    def epoch_pairs(self, epoch: int | None = None) -> EpochPairs:
        """Every rank's pairs of one epoch, drawn from (seed, epoch) alone."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        n = self.pairs_per_epoch
        counters: Counter = Counter()
        reps = int(math.ceil(n / self._valid_anchors.size))
        anchors = np.concatenate([rng.permutation(self._valid_anchors) for _ in range(reps)])[:n]
        cats = rng.choice(3, size=n, p=self.probs)
        cats = self._category_fallback(cats, counters)
        for c in range(3):
            lacking = np.flatnonzero((cats == c) & (self._counts[anchors, c] == 0))
            if lacking.size:
                anchors[lacking] = rng.choice(self._has[c], size=lacking.size)
                counters[f'swapped_{CATEGORIES[c]}'] += int(lacking.size)
        partner = np.empty(n, dtype=np.int64)
        psi = np.zeros(n, dtype=np.float32)
        for c in (0, 1):
            sel = np.flatnonzero(cats == c)
            if sel.size:
                ptr, cols, vals = self._lists[c]
                a = anchors[sel]
                k = ptr[a] + (rng.random(sel.size) * self._counts[a, c]).astype(np.int64)
                k = np.minimum(k, ptr[a + 1] - 1)
                partner[sel], psi[sel] = cols[k], vals[k]
        sel = np.flatnonzero(cats == 2)
        if sel.size:
            partner[sel] = self._hard(anchors[sel], rng, counters)
        for c in range(3):
            counters[CATEGORIES[c]] += int(np.sum(cats == c))
        label = (psi > POSITIVE_PSI).astype(np.float32) if self.binary else psi.copy()
        self.counters = counters
        return EpochPairs(anchors, partner, label, psi, cats.astype(np.int8))

    def _category_fallback(self, cats: np.ndarray, counters: Counter) -> np.ndarray:
        out = cats.copy()
        for c in range(3):
            if self._has[c].size:
                continue
            to = next(t for t in _FALLBACK_ORDER[c] if self._has[t].size)
            moved = int(np.sum(cats == c))
            out[cats == c] = to
            if moved:
                counters[f'fallback_{CATEGORIES[c]}_to_{CATEGORIES[to]}'] += moved
        return out

    def _is_excluded(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        keys = a * self.shape[1] + b
        pos = np.searchsorted(self._nz_keys, keys)
        pos = np.minimum(pos, max(self._nz_keys.size - 1, 0))
        hit = (self._nz_keys[pos] == keys) if self._nz_keys.size else np.zeros(a.size, bool)
        if self.within:
            hit |= a == b
        return hit

    def _hard(self, anchors: np.ndarray, rng: np.random.Generator,
              counters: Counter) -> np.ndarray:
        """Uniform ψ = 0 partners: rejection sampling, then an exact draw for stubborn rows."""
        out = np.full(anchors.size, -1, dtype=np.int64)
        todo = np.arange(anchors.size)
        for _ in range(32):
            if todo.size == 0:
                break
            cand = self._valid_partners[rng.integers(0, self._valid_partners.size, todo.size)]
            ok = ~self._is_excluded(anchors[todo], cand)
            out[todo[ok]] = cand[ok]
            todo = todo[~ok]
        for t in todo:  # anchors overlapping nearly every partner: list the complement
            a = int(anchors[t])
            bad = self._csr.indices[self._csr.indptr[a]:self._csr.indptr[a + 1]]
            free = np.setdiff1d(self._valid_partners, bad, assume_unique=False)
            if self.within:
                free = free[free != a]
            out[t] = rng.choice(free)
            counters['hard_exact_draws'] += 1
        return out


class PairImages(Dataset):
    """
    Images of a pair by (anchor, partner, label) index: (tensor, tensor, float32 label).

    Uses the project's one image reader and preprocessing. An image that fails to load although
    it passed the up-front check is replaced by the other image of the pair with label 1 (an
    image with itself, d = 0: a zero-loss pair), so one broken file never stops training;
    such replacements are counted in `counters` (per worker process). ``transform(image,
    index)``, when given, changes each uint8 RGB image before preprocessing (training
    augmentation read afresh every step, `training.fit.augment.OnlineAugment`).
    """

    def __init__(self, anchor_paths: Sequence[str], partner_paths: Sequence[str],
                 size_hw: Sequence[int], mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, transform=None) -> None:
        self.anchor_paths = list(anchor_paths)
        self.partner_paths = list(partner_paths)
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.counters: Counter = Counter()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.anchor_paths)

    def _load(self, path: str, index: int = 0) -> torch.Tensor | None:
        from vpr_ros.core.preprocess import preprocess
        from vpr_ros.training.data.dataset import load_image

        img = load_image(path, self.counters)
        if img is None:
            return None
        if self.transform is not None:
            img = self.transform(img, index)
        kw = {}
        if self.mean is not None:
            kw['mean'] = self.mean
        if self.std is not None:
            kw['std'] = self.std
        return preprocess(img, self.size_hw, 'rgb8', **kw)

    def __getitem__(self, item: tuple[int, int, float]):
        a, b, label = item
        xa = self._load(self.anchor_paths[int(a)], int(a))
        xb = self._load(self.partner_paths[int(b)], int(b))
        label = torch.tensor(float(label), dtype=torch.float32)
        if xa is None or xb is None:
            self.counters['pairs_replaced'] += 1
            if xa is None and xb is None:
                xa = xb = torch.zeros(3, *self.size_hw)
            xa = xb if xa is None else xa
            xb = xa if xb is None else xb
            label = torch.tensor(1.0)
        return xa, xb, label


__all__ = ['CATEGORIES', 'DEFAULT_PROBS', 'EpochPairs', 'PairImages', 'PairSampler',
           'POSITIVE_PSI']
