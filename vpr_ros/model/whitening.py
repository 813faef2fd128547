"""
PCA-whitening of global descriptors (Radenović et al.; as in the GCL evaluation).

Whitening decorrelates descriptor dimensions and down-weights the dominant (often bursty,
uninformative) directions, which usually improves retrieval, and it reduces the dimension.
It is fitted on descriptors (e.g. the map's) and then applied, or attached to a ``VPRNet``.
"""
import numpy as np

from vpr_ros.core.errors import VPRError


def fit_pca_whitening(descs: np.ndarray, out_dim: int,
                      eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """
    Fit whitening on (N, D) descriptors: returns mean (D,) and projection (out_dim, D).

    Centre, take the eigendecomposition of the covariance, keep the top ``out_dim``
    components, each scaled by ``1 / sqrt(eigenvalue + eps)``. Centred data has rank at most
    N - 1, so ``out_dim`` must not exceed that: a direction with no variance would be blown
    up by 1 / sqrt(eps) on new data.
    """
    x = np.asarray(descs, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise VPRError(f'descriptors must be a finite (N, D) array, got shape {x.shape}')
    n, d = x.shape
    out_dim = int(out_dim)
    if not 1 <= out_dim <= min(d, n - 1):
        raise VPRError(f'whitening out_dim must be in 1..min(D, N-1) = {min(d, n - 1)} '
                       f'for {n} descriptors of dimension {d}, got {out_dim}')
    mean = x.mean(axis=0)
    xc = x - mean
    if n > d:
        cov = xc.T @ xc / n
        eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(eigval)[::-1][:out_dim]
        eigval, eigvec = eigval[order], eigvec[:, order].T
    else:
        # Fewer samples than dimensions: the SVD of the data is far cheaper than a D x D eigh.
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        eigval, eigvec = (s[:out_dim] ** 2) / n, vt[:out_dim]
    if eigval[-1] <= eps * max(eigval[0], eps):
        raise VPRError(f'descriptors span fewer than {out_dim} dimensions; lower out_dim')
    # Fix each component's sign (largest-magnitude entry positive) so refits are comparable.
    signs = np.sign(eigvec[np.arange(out_dim), np.abs(eigvec).argmax(axis=1)])
    proj = (eigvec * signs[:, None]) / np.sqrt(eigval + eps)[:, None]
    return mean.astype(np.float32), proj.astype(np.float32)


def apply_whitening(descs: np.ndarray, mean: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Whiten (N, D) or (D,) descriptors and L2-normalise them again (float32)."""
    x = np.asarray(descs, dtype=np.float32)
    out = (x - np.asarray(mean, dtype=np.float32)) @ np.asarray(proj, dtype=np.float32).T
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)
