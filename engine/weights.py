"""Initial weights: the canonical scheme (MODEL.md "Populations and wiring") or
the seed recipe's (pinglab's init_weight, MODEL.md last section)."""

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
    if config.init_scheme == "seed":
        weights = _seed_scheme(config, gen)
        return {name: w.to(device=config.torch_device, dtype=config.torch_dtype) for name, w in weights.items()}
    f64 = torch.float64

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=f64)

    in_mask = uniform(config.n_input, config.n_e) >= config.w_in_sparsity
    in_values = config.w_in_scale * (0.5 + uniform(config.n_input, config.n_e))
    ei_mask = uniform(config.n_e, config.n_i) < config.p_ei
    ie_mask = uniform(config.n_i, config.n_e) < config.p_ie
    w_out = config.w_out_std * torch.randn(config.n_e, config.n_out, generator=gen, dtype=f64)
    if config.w_out_mean != 0.0 or config.w_out_scale != 1.0:  # exact canonical draw otherwise
        w_out = config.w_out_scale * (config.w_out_mean + w_out)
    weights = {
        "W_in": in_values * in_mask,
        "W_ei": ei_mask.to(f64) * config.ei_strength,
        "W_ie": ie_mask.to(f64) * config.ie_strength,
        "W_out": w_out,
    }
    return {name: w.to(device=config.torch_device, dtype=config.torch_dtype) for name, w in weights.items()}


def _seed_scheme(config: Config, gen: torch.Generator) -> Weights:
    """pinglab's init (models.init_weight, config.build_net, cli/train.py), in its order.

    Each matrix [n_pre, n_post] is N(mean, std) clamped >= 0; a sparse one keeps
    an entry where U(0, 1) > sparsity and is divided by (1 - sparsity) (the mean
    input survives the zeros); then everything is divided by the fan-in n_pre:
        W_in   mean w_in_scale, std init_std_frac x mean, sparsity w_in_sparsity
        W_out  N(w_out_mean, w_out_std) / n_e, then x w_out_scale
        W_ei   mean ei_strength, W_ie mean ie_strength (std frac x mean), dense
               unless p_ei / p_ie < 1 (sparsity 1 - p)
    Drawn in float32 in pinglab's order (W_in, W_out, the all-zero E->E block it
    draws too, W_ei, W_ie), so a generator in the same state gives its weights
    bit for bit (tests/engine/test_seed_recipe.py checks against its output).
    """
    def draw(n_pre: int, n_post: int, mean: float, std: float, sparsity: float) -> torch.Tensor:
        w = torch.randn(n_pre, n_post, generator=gen).mul_(std).add_(mean).clamp_(min=0)
        if sparsity > 0:
            w = w * (torch.rand(n_pre, n_post, generator=gen) > sparsity).float()
            w = w / (1.0 - sparsity)
        return w / n_pre

    frac = config.init_std_frac
    w_in = draw(config.n_input, config.n_e, config.w_in_scale, frac * config.w_in_scale, config.w_in_sparsity)
    w_out = draw(config.n_e, config.n_out, config.w_out_mean, config.w_out_std, 0.0)
    w_out = w_out.mul_(config.w_out_scale)
    torch.randn(config.n_e, config.n_e, generator=gen)  # pinglab's E->E block (zero): keeps the stream aligned
    w_ei = draw(config.n_e, config.n_i, config.ei_strength, frac * config.ei_strength, 1.0 - config.p_ei)
    w_ie = draw(config.n_i, config.n_e, config.ie_strength, frac * config.ie_strength, 1.0 - config.p_ie)
    return {"W_in": w_in, "W_ei": w_ei, "W_ie": w_ie, "W_out": w_out}
