"""
PCA-whitening of global descriptors (Radenović et al.; as in the GCL evaluation).

Whitening decorrelates descriptor dimensions and down-weights the dominant (often bursty,
uninformative) directions, which usually improves retrieval, and it reduces the dimension.
It is fitted on descriptors (e.g. the map's) and then applied, or attached to a ``VPRNet``.
"""
import numpy as np

from vpr_ros.core.errors import VPRError
from vpr_ros.core.pca import principal_components


def fit_pca_whitening(descs: np.ndarray, out_dim: int,
                      eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """
    Fit whitening on (N, D) descriptors: returns mean (D,) and projection (out_dim, D).

    Centre, take the eigendecomposition of the covariance, keep the top ``out_dim``
    components, each scaled by ``1 / sqrt(eigenvalue + eps)``. Centred data has rank at most
    N - 1, so ``out_dim`` must not exceed that: a direction with no variance would be blown
    up by 1 / sqrt(eps) on new data.
    """
    mean, eigval, vecs = principal_components(np.asarray(descs, dtype=np.float64), out_dim,
                                              'whitening')
    if eigval[-1] <= eps * max(eigval[0], eps):
        raise VPRError(f'descriptors span fewer than {out_dim} dimensions; lower out_dim')
    proj = vecs / np.sqrt(eigval + eps)[:, None]
    return mean.astype(np.float32), proj.astype(np.float32)


def apply_whitening(descs: np.ndarray, mean: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Whiten (N, D) or (D,) descriptors and L2-normalise them again (float32)."""
    x = np.asarray(descs, dtype=np.float32)
    out = (x - np.asarray(mean, dtype=np.float32)) @ np.asarray(proj, dtype=np.float32).T
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)
