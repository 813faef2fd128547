"""Plain PCA projection (training/ship/projection.py) and `vpr-export --pca-dim` (issue 13)."""
import numpy as np
import pytest
from test_export import _images, run  # noqa: F401 - the trained-run fixture

from vpr_ros.core.errors import VPRError
from vpr_ros.model.encoder import build_encoder, Encoder
from vpr_ros.model.model_file import load_model
from vpr_ros.model.whitening import fit_pca_whitening
from vpr_ros.training.ship.export import load_trained_net
from vpr_ros.training.ship.export import main as export_main
from vpr_ros.training.ship.projection import fit_pca_projection, fit_projection


def _descs(n: int = 400, d: int = 48, rank: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, rank)) * (1.0 / np.arange(1, rank + 1))
    x = np.abs(z @ rng.standard_normal((rank, d)) + 3.0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize('n', [400, 30])  # eigh of the covariance, and the SVD path (n <= d)
def test_pca_is_whitening_without_the_scaling(n: int) -> None:
    x = _descs(n)
    mean, proj = fit_pca_projection(x, 10)
    np.testing.assert_allclose(proj @ proj.T, np.eye(10), atol=1e-5)
    wmean, wproj = fit_pca_whitening(x, 10)
    np.testing.assert_allclose(mean, wmean, atol=1e-6)
    unit = wproj / np.linalg.norm(wproj, axis=1, keepdims=True)
    np.testing.assert_allclose(proj, unit, atol=1e-4)  # same directions, same signs
    assert np.all(np.linalg.norm(wproj, axis=1) > 2.0)  # whitening did scale them up


def test_compact_map_index_fits_the_same_components() -> None:
    """The map's compact kind, export's PCA and whitening share one fit (core/pca.py)."""
    from vpr_ros.map.compact import fit_projection as map_fit
    x = _descs(400)
    _, proj = fit_pca_projection(x, 10)
    np.testing.assert_allclose(map_fit(x, 10), proj, atol=1e-4)


def test_full_rank_pca_keeps_centred_distances() -> None:
    rng = np.random.default_rng(1)  # exactly rank 12 around a mean
    x = (rng.standard_normal((300, 12)) @ rng.standard_normal((12, 48)) + 5.0).astype(np.float32)
    mean, proj = fit_pca_projection(x, 12)
    a, b = (x[:50] - mean) @ proj.T, (x[50:100] - mean) @ proj.T
    np.testing.assert_allclose(np.linalg.norm(a - b, axis=1),
                               np.linalg.norm(x[:50] - x[50:100], axis=1), rtol=1e-4, atol=1e-3)


def test_refuses_impossible_fits() -> None:
    with pytest.raises(VPRError):
        fit_pca_projection(_descs(n=8), 8)  # rank of 8 centred rows is 7
    with pytest.raises(VPRError):
        fit_pca_projection(np.full((20, 4), np.nan), 2)
    with pytest.raises(VPRError):
        fit_projection(_descs(), 4, 'zca')


def test_export_with_plain_pca(run, tmp_path) -> None:  # noqa: F811
    root, out = run
    path = str(tmp_path / 'model_pca.pt')
    assert export_main([out, '--out', path, '--pca-dim', '24', '--data-root', root,
                        '--whiten-map', 'train_map']) == 0
    enc = build_encoder(path, device='cpu')
    assert enc.dim == 24
    w = enc.net.whitening
    proj, mean = w.proj.numpy(), w.mean.numpy()
    np.testing.assert_allclose(proj @ proj.T, np.eye(24), atol=1e-4)  # no per-component scale
    net, _ = load_trained_net(out)
    imgs = _images(root)
    raw = Encoder(net, 'trained', device='cpu').embed(imgs)
    want = (raw - mean) @ proj.T
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.embed(imgs), want, atol=1e-4)
    _, prov = load_model(path)
    assert prov['whitening']['kind'] == 'pca' and prov['whitening']['dim'] == 24


def test_export_refuses_both_projections(run, tmp_path) -> None:  # noqa: F811
    root, out = run
    with pytest.raises(SystemExit) as exc:
        export_main([out, '--out', str(tmp_path / 'm.pt'), '--pca-dim', '8', '--whiten-dim',
                     '8', '--data-root', root, '--whiten-map', 'train_map'])
    assert exc.value.code == 2
