"""RLS: P stays exactly symmetric, and equals (I / alpha + sum r r^T)^-1."""

import torch

from engine.force.rls import rls_init, rls_update


def test_p_stays_symmetric_and_is_the_regularised_inverse():
    generator = torch.Generator().manual_seed(0)
    n, alpha = 60, torch.tensor([1e-3, 1e-1])
    state = rls_init(alpha, n, k=2)
    rates = 50 * torch.rand(300, 2, n, generator=generator)
    for r in rates:
        state = rls_update(state, r, torch.randn(2, 2, generator=generator))
    assert state.P.dtype == torch.float64 and state.updates == 300
    assert torch.equal(state.P, state.P.transpose(1, 2))  # exactly, not approximately
    for b in range(2):
        r = rates[:, b].double()
        expected = torch.linalg.inv(torch.eye(n, dtype=torch.float64) / alpha[b] + r.T @ r)
        assert torch.allclose(state.P[b], expected, rtol=1e-6, atol=1e-12)
        assert torch.linalg.eigvalsh(state.P[b]).min() > 0


def test_decoders_are_the_ridge_solution():
    """After M updates phi = (I / alpha + sum r r^T)^-1 sum r f^T: the ridge
    regression with penalty 1 / alpha, close to the true readout here."""
    generator = torch.Generator().manual_seed(1)
    n, alpha = 20, 10.0
    true_phi = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    state = rls_init(torch.tensor([alpha]), n, k=1)
    rates = torch.rand(400, n, generator=generator, dtype=torch.float64)
    for r in rates:
        r = r[None]
        state = rls_update(state, r, r @ state.phi[0] - r @ true_phi)
    ridge = torch.linalg.solve(torch.eye(n, dtype=torch.float64) / alpha + rates.T @ rates,
                               rates.T @ (rates @ true_phi))
    assert torch.allclose(state.phi[0], ridge, rtol=1e-8, atol=1e-10)
    assert torch.allclose(state.phi[0], true_phi, rtol=0.02, atol=0.02)
