"""
Generalized Contrastive Loss (GCL, Leyva-Vallina et al., eq. 3) and the binary contrastive loss.

L = ψ·½d² + (1−ψ)·½·max(τ−d, 0)², with d the Euclidean distance of the two descriptors and ψ the
graded similarity of the pair (2D FoV overlap). With ψ ∈ {0, 1} it is exactly the contrastive
loss (eq. 1), so the baseline shares the code: `contrastive_loss` only checks its labels are
binary. Gradients w.r.t. d (eq. 5): d + τ(ψ−1) when d < τ, d·ψ when d ≥ τ.
"""
import torch
from torch import nn

#: The paper's margin τ (descriptors are L2-normalised, so d ∈ [0, 2]).
DEFAULT_MARGIN = 0.5


def pair_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """
    Euclidean distance per row of two (N, D) descriptor batches.

    The square root gets a floor so that identical descriptors (a pair of one image with
    itself, ψ = 1) give a zero gradient instead of NaN.
    """
    sq = (a.float() - b.float()).pow(2).sum(dim=1)
    return torch.sqrt(sq.clamp_min(eps))


def gcl_loss(d: torch.Tensor, psi: torch.Tensor, margin: float = DEFAULT_MARGIN,
             reduction: str = 'mean') -> torch.Tensor:
    """
    GCL of distances d (N,) with graded labels psi (N,) in [0, 1].

    Computed in float32 whatever the autocast dtype, since ½d² of half-precision distances loses
    the small differences the graded labels are about.
    """
    d = d.float()
    psi = psi.to(device=d.device, dtype=torch.float32)
    if d.shape != psi.shape:
        raise ValueError(f'distances {tuple(d.shape)} and labels {tuple(psi.shape)} differ')
    per_pair = psi * 0.5 * d.pow(2) + (1.0 - psi) * 0.5 * torch.clamp(margin - d, min=0).pow(2)
    if reduction == 'mean':
        return per_pair.mean()
    if reduction == 'sum':
        return per_pair.sum()
    if reduction == 'none':
        return per_pair
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def contrastive_loss(d: torch.Tensor, y: torch.Tensor, margin: float = DEFAULT_MARGIN,
                     reduction: str = 'mean') -> torch.Tensor:
    """
    Binary contrastive loss (eq. 1), the CL baseline: GCL restricted to labels y ∈ {0, 1}.

    Refuses graded labels, so a baseline run can never silently train on ψ.
    """
    y = y.to(device=d.device, dtype=torch.float32)
    if bool(((y != 0) & (y != 1)).any()):
        raise ValueError('contrastive loss needs binary labels (0 or 1); use gcl_loss for ψ')
    return gcl_loss(d, y, margin, reduction)


class PairLoss(nn.Module):
    """Loss on two descriptor batches: 'gcl' (graded ψ) or 'cl' (binary labels)."""

    def __init__(self, kind: str = 'gcl', margin: float = DEFAULT_MARGIN) -> None:
        super().__init__()
        if kind not in ('gcl', 'cl'):
            raise ValueError(f"loss must be 'gcl' or 'cl', not {kind!r}")
        self.kind = kind
        self.margin = float(margin)

    def forward(self, desc_a: torch.Tensor, desc_b: torch.Tensor,
                label: torch.Tensor) -> torch.Tensor:
        d = pair_distance(desc_a, desc_b)
        fn = gcl_loss if self.kind == 'gcl' else contrastive_loss
        return fn(d, label, self.margin)

    def extra_repr(self) -> str:
        return f'kind={self.kind}, margin={self.margin}'


__all__ = ['DEFAULT_MARGIN', 'PairLoss', 'contrastive_loss', 'gcl_loss', 'pair_distance']
