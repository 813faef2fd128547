"""--lowtex-negatives: low-texture frames the gate rejects, label-0 pairs of them per epoch."""
import csv
import os

import numpy as np
import pytest
import scipy.sparse as sp
from synthetic import make_synthetic_garden
import torch

from vpr_ros.model.encoder import ModelSpec
from vpr_ros.training.data.dataset import load_image, select_traverses
from vpr_ros.training.data.pairs import PairSampler
from vpr_ros.training.fit.lowtex import (
    frame_tensors,
    is_low_texture,
    lowtex_hook,
    lowtex_pairs,
    LowtexPairs,
    LowtexSampler,
    make_lowtex_frames,
)
from vpr_ros.training.fit.train import main


@pytest.fixture(scope='module')
def garden(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('garden'))
    make_synthetic_garden(root)
    return root


def _paths(root: str) -> list[str]:
    return [p for t in select_traverses(root, ['train_query']) for p in t.image_paths]


def test_frames_are_low_texture_and_from_distinct_images(garden):
    paths = _paths(garden)
    frames, sources = make_lowtex_frames(paths, 12, seed=1)
    assert len(frames) == 12 and np.unique(sources).size == 12
    assert all(is_low_texture(f) for f in frames)
    # the definition separates them from what they were made of: the sources pass the gate
    assert not any(is_low_texture(load_image(paths[i])) for i in sources)
    for f, i in zip(frames, sources):
        assert f.shape == load_image(paths[i]).shape and f.dtype == np.uint8
    again, sources2 = make_lowtex_frames(paths, 12, seed=1)
    np.testing.assert_array_equal(sources, sources2)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    _, other = make_lowtex_frames(paths, 12, seed=2)
    assert not np.array_equal(sources, other)


def test_lowtex_pairs_never_pair_a_frame_with_itself():
    p = lowtex_pairs(5, 4000, np.random.default_rng(0))
    assert p.shape == (4000, 2) and not np.any(p[:, 0] == p[:, 1])
    assert p.min() == 0 and p.max() == 4
    assert lowtex_pairs(1, 10, np.random.default_rng(0)).shape == (0, 2)


def _sampler(frac: float = 0.25, n_frames: int = 7) -> tuple[PairSampler, LowtexSampler]:
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((30, 40)) < 0.1, rng.uniform(0.05, 1, (30, 40)), 0)
    base = PairSampler(sp.csr_matrix(dense.astype(np.float32)), pairs_per_epoch=200, seed=3)
    return base, LowtexSampler(base, n_frames, frac, seed=3)


def test_sampler_adds_frac_label0_pairs_and_keeps_the_psi_pairs():
    base, s = _sampler(frac=0.25)
    s.set_epoch(2)                                 # delegated to the ψ sampler
    assert base.epoch == 2 and s.state_dict() == base.state_dict()
    items = list(s)
    assert len(items) == len(s) == 200 + 50
    lowtex = [it for it in items if it[0] < 0]
    assert len(lowtex) == 50
    for a, b, y in lowtex:
        assert b < 0 and a != b and y == 0.0 and -7 <= min(a, b) and max(a, b) <= -1
    ref = base.rank_pairs(2)
    psi_items = [it for it in items if it[0] >= 0]
    assert sorted(psi_items) == sorted(zip(ref.anchor.tolist(), ref.partner.tolist(),
                                           ref.label.tolist()))
    positions = [k for k, it in enumerate(items) if it[0] < 0]
    assert positions[0] < 100 < positions[-1]      # shuffled in, not appended
    assert s.items(2) == items and s.items(3) != items  # f(seed, epoch)
    assert len(LowtexSampler(base, 7, 0.0)) == 200 and len(LowtexSampler(base, 1, 0.5)) == 200


def test_dataset_serves_frames_for_negative_indices():
    class Base(torch.utils.data.Dataset):
        def __getitem__(self, item):
            return torch.full((2,), float(item[0])), torch.full((2,), float(item[1])), \
                torch.tensor(float(item[2]))

        def __len__(self):
            return 10

    frames = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    ds = LowtexPairs(Base(), frames)
    xa, xb, y = ds[(-1, -3, 0.0)]
    torch.testing.assert_close(xa, frames[0])
    torch.testing.assert_close(xb, frames[2])
    assert float(y) == 0.0
    xa, xb, y = ds[(4, 5, 0.7)]
    assert float(xa[0]) == 4 and float(xb[0]) == 5 and float(y) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        ds[(-1, 2, 0.0)]


def test_cached_frames_are_the_prefix_of_the_images(garden):
    from vpr_ros.model.encoder import VPRNet
    spec = ModelSpec(image_size=(64, 64))
    net = VPRNet(spec, pretrained=False)
    net.set_trainable_blocks(2)
    frames, _ = make_lowtex_frames(_paths(garden), 3)
    x = frame_tensors(frames, spec)
    cut = net.frozen_prefix()
    f = frame_tensors(frames, spec, net, cut, torch.device('cpu'))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.forward_from(f, cut), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_with_lowtex_negatives(garden, tmp_path, capsys):
    """The option trains, and the frozen-feature cache path gives the image path's loss."""
    args = ['--data-root', garden, '--train-map', 'train_map', '--train-query', 'train_query',
            '--image-size', '64', '64', '--workers', '0', '--no-progress', '--epochs', '2',
            '--batch-size', '16', '--pairs-per-epoch', '64', '--lowtex-negatives', '0.5']
    logs = {}
    for mode in ('on', 'off'):
        out = str(tmp_path / mode)
        assert main(args + ['--feature-cache', mode, '--out', out]) == 0
        with open(os.path.join(out, 'train_log.csv')) as f:
            logs[mode] = [float(r['loss']) for r in csv.DictReader(f)]
    said = capsys.readouterr().out
    assert said.count('32 low-texture pairs (psi = 0) per epoch') == 2
    assert logs['on'] == pytest.approx(logs['off'], rel=1e-3)


def test_the_option_is_a_pair_hook():
    """--lowtex-negatives asks for one pair hook; 0 asks for none (training unchanged)."""
    from vpr_ros.training.fit.train import pair_hooks_from_args
    from vpr_ros.training.fit.train_args import build_parser

    base = ['--train-query', 'q', '--out', 'o']
    assert pair_hooks_from_args(build_parser().parse_args(base)) == []
    assert len(pair_hooks_from_args(build_parser().parse_args(
        base + ['--lowtex-negatives', '0.5']))) == 1
    assert lowtex_hook(0.0) is None


def test_train_runs_the_hooks_it_is_given(garden, tmp_path, capsys):
    """Hooks are train()'s argument: the trainer uses the sampler and dataset a hook returns."""
    from vpr_ros.training.fit.pair_hooks import PairSetup
    from vpr_ros.training.fit.train import train
    from vpr_ros.training.fit.train_args import build_parser

    seen = []

    def recording(setup: PairSetup) -> PairSetup:
        out = lowtex_hook(0.25)(setup)
        seen.append((setup, out))
        return out

    args = build_parser().parse_args([
        '--data-root', garden, '--train-map', 'train_map', '--train-query', 'train_query',
        '--image-size', '64', '64', '--workers', '0', '--no-progress', '--epochs', '1',
        '--batch-size', '16', '--pairs-per-epoch', '64', '--feature-cache', 'off',
        '--no-initial-eval', '--out', str(tmp_path / 'run')])
    summary = train(args, pair_hooks=[recording])   # the option itself is off (0)
    assert len(seen) == 1
    before, after = seen[0]
    assert isinstance(after.sampler, LowtexSampler) and after.sampler.base is before.sampler
    assert isinstance(after.dataset, LowtexPairs) and after.dataset.base is before.dataset
    assert before.cut == 0 and len(before.image_paths) == len(set(before.image_paths)) > 0
    assert '16 low-texture pairs (psi = 0) per epoch' in capsys.readouterr().out
    assert summary['epochs'] == 1
