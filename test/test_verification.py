"""Geometric verification on real photos: overlapping views pass, unrelated photos do not."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from image_sequences import photo, unrelated_photos  # noqa: E402

from vpr_ros.core.errors import ImageError, VPRError  # noqa: E402
from vpr_ros.core.verification import (  # noqa: E402
    Features,
    features_from_bytes,
    features_to_bytes,
    GeometricVerifier,
)


def _views(name='astronaut'):
    """Two overlapping 240x320 views of one photo (shifted 40/20 px, one brighter)."""
    img = photo(name)
    a = img[60:300, 60:380]
    b = np.clip(img[80:320, 100:420].astype(np.int16) + 20, 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize('feature', ['orb', 'sift'])
def test_overlapping_views_verify(feature):
    v = GeometricVerifier(feature=feature)
    a, b = _views()
    res = v.verify(v.extract(a), v.extract(b))
    assert res.ok, res
    assert res.inliers >= 100, res
    assert res.reason == 'ok'


@pytest.mark.parametrize('feature', ['orb', 'sift'])
def test_unrelated_photos_fail(feature):
    v = GeometricVerifier(feature=feature)
    a, _ = _views()
    fa = v.extract(a)
    for other in unrelated_photos() + [photo('coffee')[:240, :320], photo('rocket')[:240, :320]]:
        res = v.verify(fa, v.extract(other))
        assert not res.ok, res
        assert res.inliers < v.min_inliers
        assert res.reason


def test_essential_with_intrinsics():
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    v = GeometricVerifier(method='essential', K=K)
    a, b = _views('coffee')
    res = v.verify(v.extract(a), v.extract(b))
    assert res.ok and res.inliers >= 30, res
    with pytest.raises(VPRError, match='K'):
        GeometricVerifier(method='essential')


def test_degenerate_inputs_never_raise():
    v = GeometricVerifier()
    blank = v.extract(np.full((240, 320, 3), 128, np.uint8))
    assert len(blank) == 0
    good = v.extract(_views()[0])
    for q, m in [(blank, good), (good, blank), (blank, blank)]:
        res = v.verify(q, m)
        assert not res.ok and res.inliers == 0 and 'too few features' in res.reason
    # a handful of features: too few ratio-test matches, not an exception
    tiny = Features('orb', good.keypoints[:5], good.descriptors[:5], good.image_size)
    res = v.verify(tiny, good)
    assert not res.ok and 'too few' in res.reason
    sift = GeometricVerifier('sift').extract(_views()[0])
    res = v.verify(sift, good)
    assert not res.ok and 'mismatch' in res.reason


def test_extract_encodings_and_bad_images():
    v = GeometricVerifier()
    rgb = _views()[0]
    n_rgb = len(v.extract(rgb))
    assert n_rgb > 300
    assert len(v.extract(rgb[:, :, ::-1].copy(), 'bgr8')) == n_rgb
    gray = rgb.mean(axis=2).astype(np.uint8)
    assert len(v.extract(gray, 'mono8')) > 300
    assert len(v.extract(gray[:, :, None], 'mono8')) > 300
    assert len(v.extract(gray.astype(np.uint16) * 257, 'mono16')) > 300
    for bad in [np.zeros((0, 0, 3), np.uint8), np.zeros((10, 10, 2), np.uint8),
                np.zeros((10, 10, 3), np.float64)]:
        with pytest.raises(ImageError):
            v.extract(bad)


@pytest.mark.parametrize('feature', ['orb', 'sift'])
def test_features_bytes_round_trip(feature):
    v = GeometricVerifier(feature=feature)
    f = v.extract(_views()[0])
    data = f.to_bytes()
    assert isinstance(data, bytes)
    width = 32 if feature == 'orb' else 128 * 4
    assert len(data) < 64 + len(f) * (8 + width)  # compact: header + raw arrays only
    g = Features.from_bytes(data)
    assert g.feature == feature and g.image_size == (240, 320)
    np.testing.assert_array_equal(g.keypoints, f.keypoints)
    np.testing.assert_array_equal(g.descriptors, f.descriptors)
    assert g.keypoints.dtype == np.float32 and g.descriptors.dtype == f.descriptors.dtype
    assert features_from_bytes(features_to_bytes(f)).image_size == f.image_size
    # the restored features verify exactly like the originals
    other = v.extract(_views()[1])
    assert v.verify(g, other) == v.verify(f, other)
    empty = Features.from_bytes(v.extract(np.zeros((50, 50), np.uint8)).to_bytes())
    assert len(empty) == 0


def test_corrupt_blobs_raise_clearly():
    data = GeometricVerifier().extract(_views()[0]).to_bytes()
    for bad in [b'', b'junk', data[:-1], data + b'x', b'XXXX' + data[4:]]:
        with pytest.raises(VPRError):
            Features.from_bytes(bad)


def test_bad_parameters():
    for kw in [dict(feature='akaze'), dict(method='homography'), dict(ratio=0),
               dict(min_inliers=0), dict(ransac_threshold_px=0), dict(n_features=2),
               dict(clahe_clip=-1.0), dict(clahe_clip=float('nan'))]:
        with pytest.raises(VPRError):
            GeometricVerifier(**kw)


def test_local_contrast_equalisation_lets_dim_hazy_views_verify():
    """Two views squeezed into a dim, flat band of grey (dusk, fog): CLAHE gives ORB corners."""
    a, b = _views()
    dim = [(40 + 0.06 * x.astype(np.float32)).astype(np.uint8) for x in (a, b)]
    plain, clahe = GeometricVerifier(), GeometricVerifier(clahe_clip=4.0)
    before = plain.verify(plain.extract(dim[0]), plain.extract(dim[1]))
    after = clahe.verify(clahe.extract(dim[0]), clahe.extract(dim[1]))
    assert after.ok and after.inliers >= 2 * max(before.inliers, 10), (before, after)
    # unrelated photos stay unrelated
    other = clahe.extract((40 + 0.06 * photo('coffee')[:240, :320].astype(np.float32))
                          .astype(np.uint8))
    assert not clahe.verify(clahe.extract(dim[0]), other).ok
