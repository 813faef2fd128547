"""
Principal components of descriptors: the one PCA behind whitening, plain projection and the map.

Model whitening (`model/whitening.py`), the plain PCA fitted at export (`training/projection.py`)
and the compact map index (`map/compact.py`) differ only in what they do with the components, so
they share this fit: same rank check, same sign convention (largest-magnitude entry positive, so
refits are comparable), same choice of eigh of the D x D covariance (N > D) or SVD of the rows.
"""
import numpy as np

from vpr_ros.core.errors import VPRError


def principal_components(descs: np.ndarray, out_dim: int,
                         what: str = 'PCA') -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Return mean (D,), eigenvalues (out_dim,) and components (out_dim, D), largest first.

    Centring keeps the input's float precision (a float32 map sample is not doubled in memory);
    the covariance and its eigendecomposition are float64. ``out_dim`` must not exceed
    min(D, N - 1), the rank of centred data; ``what`` names the caller in the error.
    """
    x = np.asarray(descs)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise VPRError(f'descriptors must be a finite (N, D) array, got shape {x.shape}')
    n, d = x.shape
    out_dim = int(out_dim)
    if not 1 <= out_dim <= min(d, n - 1):
        raise VPRError(f'{what} out_dim must be in 1..min(D, N-1) = {min(d, n - 1)} for {n} '
                       f'descriptors of dimension {d}, got {out_dim}')
    mean = x.mean(axis=0, dtype=np.float64)
    xc = x - mean.astype(x.dtype)
    if n > d:
        cov = (xc.T @ xc).astype(np.float64) / n
        eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(eigval)[::-1][:out_dim]
        eigval, vecs = eigval[order], eigvec[:, order].T
    else:
        # Fewer samples than dimensions: the SVD of the data is far cheaper than a D x D eigh.
        _, s, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
        eigval, vecs = (s[:out_dim] ** 2) / n, vt[:out_dim]
    signs = np.sign(vecs[np.arange(out_dim), np.abs(vecs).argmax(axis=1)])
    return mean, eigval, vecs * signs[:, None]
