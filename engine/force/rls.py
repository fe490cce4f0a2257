"""Recursive least squares (the FORCE update), batched, with P in float64.

P(0) = alpha I. With k = P r and c = 1 / (1 + r.k):
    P <- P - c k k^T,    phi <- phi - c k e^T,    e = z - target.
The rank-one term is built as s s^T with s = sqrt(c) k, so P stays exactly
symmetric in floating point (s_i s_j and s_j s_i are the same product); c > 0
because P stays positive definite.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RLSState(NamedTuple):
    P: torch.Tensor  # (B, N, N) float64
    phi: torch.Tensor  # (B, N, k) float64 decoders
    updates: int  # how many updates have been applied (M in FORCE.md)


def rls_init(alpha: torch.Tensor, n: int, k: int, device: str = "cpu") -> RLSState:
    """alpha: (B,) -> P = alpha I per batch element, phi = 0."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=device).reshape(-1)
    eye = torch.eye(n, dtype=torch.float64, device=device)
    P = alpha[:, None, None] * eye
    return RLSState(P, torch.zeros(len(alpha), n, k, dtype=torch.float64, device=device), 0)


def rls_update(state: RLSState, r: torch.Tensor, error: torch.Tensor) -> RLSState:
    """One update from filtered rates r (B, N) and readout error e (B, k). P is updated in place."""
    P, phi, updates = state
    r = r.to(torch.float64)
    k = torch.bmm(P, r.unsqueeze(2)).squeeze(2)  # (B, N)
    c = 1.0 / (1.0 + (r * k).sum(dim=1))  # (B,)
    s = k * c.sqrt()[:, None]
    P.baddbmm_(s.unsqueeze(2), s.unsqueeze(1), alpha=-1.0)
    phi = phi - (c[:, None, None] * k.unsqueeze(2)) * error.to(torch.float64).unsqueeze(1)
    return RLSState(P, phi, updates + 1)
