"""Initial weights of the canonical network (MODEL.md "Populations and wiring")."""

from __future__ import annotations

import torch

from engine.config import Config

Weights = dict[str, torch.Tensor]


def init_weights(config: Config, seed: int | None = None) -> Weights:
    """Draw W_in [n_input, n_e], W_ei [n_e, n_i], W_ie [n_i, n_e], W_out [n_e, n_out].

    One generator, seeded by `seed` (default `config.seed`), draws every matrix in
    a fixed order in float64 on the CPU, so (config, seed) fixes the weights
    whatever the dtype or device, and PING and COBA of one seed share W_in, the
    connectivity masks and W_out (COBA only has ei_strength 0).
    """
    gen = torch.Generator().manual_seed(config.seed if seed is None else seed)
    f64 = torch.float64

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=f64)

    in_mask = uniform(config.n_input, config.n_e) >= config.w_in_sparsity
    in_values = config.w_in_scale * (0.5 + uniform(config.n_input, config.n_e))
    ei_mask = uniform(config.n_e, config.n_i) < config.p_ei
    ie_mask = uniform(config.n_i, config.n_e) < config.p_ie
    w_out = config.w_out_std * torch.randn(config.n_e, config.n_out, generator=gen, dtype=f64)
    weights = {
        "W_in": in_values * in_mask,
        "W_ei": ei_mask.to(f64) * config.ei_strength,
        "W_ie": ie_mask.to(f64) * config.ie_strength,
        "W_out": w_out,
    }
    return {name: w.to(device=config.torch_device, dtype=config.torch_dtype) for name, w in weights.items()}
