"""Training augmentation (vpr-train --augment): seeded images, ranges, cached views, training."""
import dataclasses
import os

import numpy as np
import pytest
from synthetic import make_synthetic_garden
import torch

from vpr_ros.model.encoder import ModelSpec, VPRNet
from vpr_ros.training.data.dataset import load_image, load_traverse, TraverseImages
from vpr_ros.training.fit.augment import (
    augment_image,
    AugmentParams,
    OnlineAugment,
    parse_augment,
    view_rng,
    ViewTransform,
    warp_features,
)
from vpr_ros.training.fit.feature_cache import FrozenFeatures, PairFeatures
from vpr_ros.training.fit.train import main

BOTH = frozenset({'photo', 'geo'})
#: every operation always on, so a test sees each of them
ALWAYS = AugmentParams(p_exposure=1, p_white_balance=1, p_contrast=1, p_gamma=1, p_grey=0,
                       p_blur=1, p_noise=1, p_jpeg=1, p_crop=1, p_roll=1, p_perspective=1)
NOTHING = AugmentParams(**{f.name: 0.0 for f in dataclasses.fields(AugmentParams)
                           if f.name.startswith('p_')})


@pytest.fixture(scope='module')
def garden(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('garden'))
    make_synthetic_garden(root)
    return root


@pytest.fixture(scope='module')
def image(garden) -> np.ndarray:
    t = load_traverse(os.path.join(garden, 'train_map', 'index.json'))
    return load_image(t.image_paths[5])


def test_same_seed_same_view_other_view_other_image(image):
    a = augment_image(image, view_rng(3, 7, 1), BOTH, ALWAYS)
    b = augment_image(image, view_rng(3, 7, 1), BOTH, ALWAYS)
    np.testing.assert_array_equal(a, b)
    for other in (view_rng(3, 7, 2), view_rng(4, 7, 1), view_rng(3, 8, 1)):
        assert not np.array_equal(a, augment_image(image, other, BOTH, ALWAYS))
    t = ViewTransform(BOTH, 3, 1, ALWAYS)
    np.testing.assert_array_equal(t(image, 7), a)


def test_output_shape_dtype_and_no_change_when_off(image):
    before = image.copy()
    for parts in (BOTH, {'photo'}, {'geo'}):
        for v in range(1, 6):
            out = augment_image(image, view_rng(0, 0, v), parts)
            assert out.shape == image.shape and out.dtype == np.uint8
            assert out.flags['C_CONTIGUOUS'] and out is not image
    np.testing.assert_array_equal(image, before)  # the input is never written
    np.testing.assert_array_equal(augment_image(image, view_rng(0, 0, 1), BOTH, NOTHING), image)
    np.testing.assert_array_equal(augment_image(image, view_rng(0, 0, 1), frozenset()), image)
    assert parse_augment('none') == frozenset() and parse_augment('photo+geo') == BOTH
    with pytest.raises(ValueError):
        parse_augment('photo+colour')


def test_exposure_acts_in_linear_light_and_white_balance_per_channel():
    grey = np.full((32, 32, 3), 100, np.uint8)
    one_stop_up = dataclasses.replace(NOTHING, p_exposure=1.0, exposure_stops=(1.0, 1.0))
    out = augment_image(grey, view_rng(0, 0, 1), {'photo'}, one_stop_up)
    lin = (out.astype(float) / 255) ** 2.2 / (100 / 255) ** 2.2
    np.testing.assert_allclose(lin, 2.0, rtol=0.03)   # twice the light, not twice the value
    wb = dataclasses.replace(NOTHING, p_white_balance=1.0)
    out = augment_image(grey, view_rng(0, 0, 2), {'photo'}, wb)
    assert out[..., 1].min() == out[..., 1].max() == 100    # green is the reference
    assert out[..., 0].mean() != 100 or out[..., 2].mean() != 100


def test_noise_level_and_darker_exposure_means_more_noise():
    flat = np.full((200, 200, 3), 100, np.uint8)
    read_only = dataclasses.replace(NOTHING, p_noise=1.0, read_noise=(4.0, 4.0),
                                    shot_noise=(0.0, 0.0))
    out = augment_image(flat, view_rng(0, 0, 1), {'photo'}, read_only)
    assert out.astype(float).std() == pytest.approx(4.0, rel=0.1)
    dark = dataclasses.replace(read_only, p_exposure=1.0, exposure_stops=(-2.0, -2.0))
    out = augment_image(flat, view_rng(0, 0, 1), {'photo'}, dark)
    assert out.astype(float).std() == pytest.approx(16.0, rel=0.1)  # gain 4 after 2 stops down


def test_geometry_moves_pixels_photometry_does_not(image):
    geo = augment_image(image, view_rng(0, 1, 1), {'geo'}, ALWAYS)
    assert not np.array_equal(geo, image)
    # a crop, roll and perspective of at most a fifth of the frame keeps the colours
    assert abs(geo.mean() - image.mean()) < 0.15 * image.mean()
    tone_only = dataclasses.replace(NOTHING, p_contrast=1.0, p_gamma=1.0)
    photo = augment_image(image, view_rng(0, 1, 2), {'photo'}, tone_only)
    # a monotone tone curve keeps the order of the grey levels: same image, other light
    g0, g1 = image[..., 1].ravel().astype(int), photo[..., 1].ravel().astype(int)
    order = np.argsort(g0, kind='stable')
    assert np.all(np.diff(g1[order]) >= -1)


def test_online_augment_is_seeded_by_torch_and_sometimes_clean(image):
    aug = OnlineAugment(BOTH, p_clean=0.25)
    torch.manual_seed(0)
    a = [aug(image) for _ in range(12)]
    torch.manual_seed(0)
    b = [aug(image) for _ in range(12)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    clean = sum(np.array_equal(x, image) for x in a)
    assert 0 < clean < 12


def test_warp_features_shape_identity_and_seed():
    x = torch.randn(4, 160, 7, 7)
    g = torch.Generator().manual_seed(0)
    y = warp_features(x, generator=g)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y, x)
    y2 = warp_features(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, y2)
    still = dataclasses.replace(AugmentParams(), feature_zoom=(1.0, 1.0), feature_roll_deg=0.0)
    torch.testing.assert_close(warp_features(x, still), x, atol=1e-5, rtol=1e-5)


def test_cache_views_clean_first_each_view_seeded(garden, tmp_path):
    t = load_traverse(os.path.join(garden, 'train_map', 'index.json'))
    images = TraverseImages([t.image_paths[i] for i in range(6)], (64, 64))
    net = VPRNet(ModelSpec(image_size=(64, 64)), pretrained=True)
    net.set_trainable_blocks(2)
    cut = net.frozen_prefix()
    plain = FrozenFeatures(net, cut, images, torch.device('cpu'), progress=False)
    views = [None] + [ViewTransform(BOTH, 0, v) for v in (1, 2)]
    cached = FrozenFeatures(net, cut, images, torch.device('cpu'), progress=False, views=views)
    again = FrozenFeatures(net, cut, images, torch.device('cpu'), progress=False, views=views)
    assert cached.view_feats.shape == (3, *plain.feats.shape) and cached.n_views == 3
    assert cached.nbytes() == 3 * plain.nbytes()
    torch.testing.assert_close(cached.feats, plain.feats)            # view 0 is the clean image
    torch.testing.assert_close(cached.view_feats, again.view_feats)  # views are f(seed, image)
    for v in (1, 2):
        assert not torch.allclose(cached.view_feats[v], plain.feats)
    # stored views are read back by a run on the same images; another seed's are not
    store = str(tmp_path / 'store')
    first = FrozenFeatures(net, cut, images, torch.device('cpu'), progress=False, views=views,
                           store=store)
    assert first.loaded == 0 and len(os.listdir(store)) == 3
    one_view = first.nbytes() / 3
    for name in os.listdir(store):   # each file holds its own view only
        assert os.path.getsize(os.path.join(store, name)) < 1.2 * one_view + 4096
    again = FrozenFeatures(net, cut, images, torch.device('cpu'), progress=False,
                           views=views[:2], store=store)
    assert again.loaded == 2
    torch.testing.assert_close(again.view_feats, cached.view_feats[:2])
    other = FrozenFeatures(net, cut, images, torch.device('cpu'), progress=False,
                           views=[None, ViewTransform(BOTH, 1, 1)], store=store)
    assert other.loaded == 1 and len(os.listdir(store)) == 4
    # a step draws a view per image: every view is served, each image of a pair on its own
    pairs = PairFeatures(cached, cached)
    torch.manual_seed(0)
    served = set()
    for _ in range(30):
        fa, fb, _ = pairs[(1, 2, 0.5)]
        served.add(next(v for v in range(3) if torch.equal(fa, cached.view_feats[v, 1])))
        assert any(torch.equal(fb, cached.view_feats[v, 2]) for v in range(3))
    assert served == {0, 1, 2}


def _args(garden: str, out: str, *extra: str) -> list[str]:
    return ['--data-root', garden, '--train-map', 'train_map', '--train-query', 'train_query',
            '--image-size', '64', '64', '--workers', '0', '--no-progress', '--epochs', '1',
            '--batch-size', '16', '--pairs-per-epoch', '48', '--no-resume', '--out', out,
            *extra]


def _weights(out: str) -> dict:
    return torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)['model']


@pytest.mark.slow
def test_augmented_training_changes_the_trained_blocks_only(garden, tmp_path, capsys):
    runs = {}
    for name, extra in (('none', ()), ('photo_geo', ('--augment', 'photo+geo', '--aug-views',
                                                      '2')),
                        ('photo_geo_again', ('--augment', 'photo+geo', '--aug-views', '2')),
                        ('featgeo', ('--augment', 'photo+featgeo', '--aug-views', '1')),
                        ('online', ('--augment', 'photo+geo', '--feature-cache', 'off'))):
        out = str(tmp_path / name)
        assert main(_args(garden, out, *extra)) == 0
        runs[name] = _weights(out)
    said = capsys.readouterr().out
    assert 'augment photo+geo (2 cached views + the clean one)' in said
    assert 'augment photo+geo (every load)' in said
    init = VPRNet(ModelSpec(image_size=(64, 64)), pretrained=True).state_dict()
    trained = ('backbone.17.', 'backbone.18.', 'pool.')
    for k, w0 in init.items():
        if k.startswith(trained):
            continue
        for name, w in runs.items():   # the frozen blocks (and their BN statistics) untouched
            torch.testing.assert_close(w[k], w0, rtol=0, atol=0, msg=f'{name} {k}')
    conv = 'backbone.18.0.weight'
    for name in ('photo_geo', 'featgeo', 'online'):
        assert not torch.allclose(runs[name][conv], init[conv])
        assert not torch.allclose(runs[name][conv], runs['none'][conv]), name
    # same seed, same augmented training
    for k in runs['photo_geo']:
        torch.testing.assert_close(runs['photo_geo'][k], runs['photo_geo_again'][k],
                                   rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_featgeo_needs_the_feature_cache(garden, tmp_path, capsys):
    out = str(tmp_path / 'nocache')
    assert main(_args(garden, out, '--augment', 'photo+featgeo', '--feature-cache', 'off')) == 2
    assert 'needs the feature cache' in capsys.readouterr().err
