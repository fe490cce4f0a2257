import torch

from engine import Config, init_weights


def test_shapes_sparsity_and_scales_follow_model_md():
    config = Config(dtype="float64")
    w = init_weights(config)
    assert w["W_in"].shape == (784, 800) and w["W_ei"].shape == (800, 200)
    assert w["W_ie"].shape == (200, 800) and w["W_out"].shape == (800, 10)
    nonzero = w["W_in"][w["W_in"] != 0]
    assert abs((w["W_in"] == 0).double().mean().item() - 0.95) < 0.005
    assert nonzero.min() >= 0.5 and nonzero.max() <= 1.5
    assert set(w["W_ei"].unique().tolist()) == {0.0, 0.05}
    assert abs((w["W_ei"] != 0).double().mean().item() - 0.2) < 0.01
    assert set(w["W_ie"].unique().tolist()) == {0.0, 1.0}
    assert abs(w["W_out"].std().item() - 0.01) < 0.001


def test_seed_fixes_weights_and_coba_shares_them():
    ping, coba = init_weights(Config(arch="ping")), init_weights(Config(arch="coba"))
    again, other = init_weights(Config(arch="ping")), init_weights(Config(arch="ping"), seed=43)
    for name in ("W_in", "W_ie", "W_out"):
        assert torch.equal(ping[name], coba[name]) and torch.equal(ping[name], again[name])
        assert not torch.equal(ping[name], other[name])
    assert ping["W_ei"].abs().sum() > 0 and coba["W_ei"].abs().sum() == 0


def test_dtype_does_not_change_values():
    w32 = init_weights(Config(dtype="float32"))
    w64 = init_weights(Config(dtype="float64"))
    assert torch.equal(w32["W_in"], w64["W_in"].float())
