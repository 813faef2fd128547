"""Pair sampler: category frequencies, labels equal ψ, fallbacks, seeding and rank sharding."""
import numpy as np
import pytest
import scipy.sparse as sp

from vpr_ros.training.data.pairs import PairImages, PairSampler


def _random_psi(n_q=60, n_m=80, seed=0, within=False):
    rng = np.random.default_rng(seed)
    n_m = n_q if within else n_m
    dense = np.zeros((n_q, n_m), np.float32)
    for i in range(n_q):
        cols = rng.choice(n_m, size=6, replace=False)
        dense[i, cols] = rng.uniform(0.01, 1.0, size=6)
        dense[i, cols[0]] = rng.uniform(0.6, 1.0)  # every anchor has a positive ...
        dense[i, cols[1]] = rng.uniform(0.05, 0.5)  # ... and a soft negative
    if within:
        dense = np.maximum(dense, dense.T)
        np.fill_diagonal(dense, 0)
    return sp.csr_matrix(dense), dense


@pytest.mark.parametrize('within', [False, True])
def test_frequencies_and_labels(within):
    psi, dense = _random_psi(within=within)
    s = PairSampler(psi, within=within, pairs_per_epoch=20000, seed=3)
    p = s.epoch_pairs(0)
    freq = np.bincount(p.category, minlength=3) / len(p)
    assert freq == pytest.approx([0.5, 0.25, 0.25], abs=0.015)
    truth = dense[p.anchor, p.partner]
    np.testing.assert_allclose(p.label, truth, atol=1e-7)  # label is ψ itself
    assert np.all(truth[p.category == 0] > 0.5)
    assert np.all((truth[p.category == 1] > 0) & (truth[p.category == 1] <= 0.5))
    assert np.all(truth[p.category == 2] == 0)
    if within:
        assert not np.any(p.anchor == p.partner)
    # hard negatives are uniform over the ψ = 0 partners: many distinct ones are drawn
    hard = p.partner[p.category == 2]
    assert np.unique(hard).size > 0.9 * dense.shape[1]


def test_binary_mode():
    psi, dense = _random_psi()
    p = PairSampler(psi, binary=True, pairs_per_epoch=2000).epoch_pairs(0)
    np.testing.assert_array_equal(p.label, (dense[p.anchor, p.partner] > 0.5).astype(np.float32))


def test_fallbacks_are_counted():
    dense = np.zeros((4, 6), np.float32)
    dense[0, 0] = 0.9  # only anchor 0 has a positive; no soft negative anywhere
    s = PairSampler(sp.csr_matrix(dense), pairs_per_epoch=400, seed=1)
    p = s.epoch_pairs(0)
    assert s.counters['fallback_soft_to_hard'] > 0
    assert s.counters['swapped_positive'] > 0
    assert np.all(p.anchor[p.category == 0] == 0)
    assert np.all(dense[p.anchor, p.partner][p.category == 2] == 0)
    assert np.bincount(p.category, minlength=3)[1] == 0


def test_masks_exclude_unreadable_images():
    psi, dense = _random_psi()
    bad_partners = np.arange(0, 80, 3)
    ok = np.ones(80, bool)
    ok[bad_partners] = False
    p = PairSampler(psi, partners=ok, anchors=np.arange(1, 60), pairs_per_epoch=5000)\
        .epoch_pairs(0)
    assert not np.isin(p.partner, bad_partners).any()
    assert not np.any(p.anchor == 0)


def test_seeded_epoch_dependent_and_sharded():
    psi, _ = _random_psi()
    a = PairSampler(psi, seed=7, pairs_per_epoch=101)
    b = PairSampler(psi, seed=7, pairs_per_epoch=101)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    ranks = [PairSampler(psi, seed=7, pairs_per_epoch=101, num_replicas=2, rank=r)
             for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    got = [list(r) for r in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0]) == 51
    full = list(a)
    interleaved = [x for pair in zip(*got) for x in pair][:101]
    assert interleaved == full  # rank r holds pairs r, r+2, ... (padded by wrapping)


def test_pair_images_replaces_unreadable(tmp_path):
    from PIL import Image

    good = tmp_path / 'a.png'
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(good)
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    ds = PairImages([str(good)], [str(tmp_path / 'bad.png')], (16, 16))
    xa, xb, y = ds[(0, 0, 0.2)]
    assert xa.shape == (3, 16, 16) and float(y) == 1.0
    assert (xa == xb).all() and ds.counters['pairs_replaced'] == 1
