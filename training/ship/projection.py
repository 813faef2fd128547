"""
Plain PCA projection of global descriptors (no per-component scaling), fitted at export.

Why: whitening (vpr_ros/model/whitening.py) scales each principal component by
1/sqrt(eigenvalue); fitted on training traverses it lifts the weak directions those conditions
happen to vary little in, which cost 0.15-0.38 R@1 on unseen conditions (issue 13). Plain PCA
keeps the components' own scale, so it only drops the low-variance directions: the same
dimension reduction (smaller maps, faster search) without re-weighting what is kept. The result
has the whitening layer's form (mean, (D, d) projection, then L2 normalisation), so
`VPRNet.set_whitening` carries it into the model file unchanged.
"""
import numpy as np

from vpr_ros.core.errors import VPRError
from vpr_ros.core.pca import principal_components


def fit_pca_projection(descs: np.ndarray, out_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Mean (d,) and orthonormal (out_dim, d) projection onto the top principal components.

    Components are sign-fixed (largest-magnitude entry positive) so refits are comparable;
    `out_dim` must not exceed min(d, N - 1), the rank of the centred data.
    """
    mean, _, vecs = principal_components(np.asarray(descs, dtype=np.float64), out_dim, 'PCA')
    return mean.astype(np.float32), vecs.astype(np.float32)


def fit_projection(descs: np.ndarray, out_dim: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) of `kind` 'pca' (plain) or 'whitening' (scaled by 1/sqrt(eig))."""
    if kind == 'pca':
        return fit_pca_projection(descs, out_dim)
    if kind == 'whitening':
        from vpr_ros.model.whitening import fit_pca_whitening
        return fit_pca_whitening(descs, out_dim)
    raise VPRError(f'projection kind must be pca or whitening, got {kind!r}')
