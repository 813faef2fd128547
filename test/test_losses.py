"""GCL and contrastive loss: values, and autograd gradients equal to the paper's eq. 4 and 5."""
import pytest
import torch

from vpr_ros.training.fit.losses import (
    contrastive_loss,
    gcl_loss,
    pair_distance,
    PairLoss,
)

TAU = 0.5
# distances on both sides of the margin (never exactly at it, where the max() has a kink)
DISTANCES = [0.0, 0.05, 0.2, 0.45, 0.55, 0.9, 1.7]
PSIS = [0.0, 0.1, 0.3, 0.5, 0.74, 1.0]


def _grad(fn, d: float, label: float) -> float:
    dt = torch.tensor([d], dtype=torch.float64, requires_grad=True)
    fn(dt, torch.tensor([label], dtype=torch.float64), TAU).backward()
    return float(dt.grad[0])


@pytest.mark.parametrize('psi', PSIS)
@pytest.mark.parametrize('d', DISTANCES)
def test_gcl_gradient_is_eq5(d, psi):
    expected = d + TAU * (psi - 1.0) if d < TAU else d * psi
    assert _grad(gcl_loss, d, psi) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('y', [0.0, 1.0])
@pytest.mark.parametrize('d', DISTANCES)
def test_cl_gradient_is_eq4(d, y):
    expected = d if y == 1 else min(d - TAU, 0.0)
    assert _grad(contrastive_loss, d, y) == pytest.approx(expected, abs=1e-6)


def test_gcl_values_and_mean():
    d = torch.tensor([0.2, 0.8, 0.3])
    psi = torch.tensor([0.7, 0.4, 0.0])
    per = [0.7 * 0.02 + 0.3 * 0.5 * 0.09, 0.4 * 0.32, 0.5 * 0.04]
    assert gcl_loss(d, psi, reduction='none').tolist() == pytest.approx(per, abs=1e-6)
    assert float(gcl_loss(d, psi)) == pytest.approx(sum(per) / 3, abs=1e-6)


def test_gcl_with_binary_labels_is_cl():
    d = torch.rand(50) * 1.5
    y = (torch.rand(50) > 0.5).float()
    assert torch.allclose(gcl_loss(d, y), contrastive_loss(d, y))


def test_cl_refuses_graded_labels():
    with pytest.raises(ValueError):
        contrastive_loss(torch.tensor([0.3]), torch.tensor([0.4]))


def test_identical_descriptors_give_finite_gradient():
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    loss = PairLoss('gcl')(a, a.detach().clone(), torch.ones(4))
    loss.backward()
    assert torch.isfinite(a.grad).all()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-9)


def test_pair_distance_matches_norm():
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    assert torch.allclose(pair_distance(a, b), (a - b).norm(dim=1), atol=1e-6)
