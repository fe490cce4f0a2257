import json

import pytest
import torch

from engine import Config, ConfigError


def test_defaults_follow_model_md_and_resolve_from_arch():
    ping, coba = Config(arch="ping"), Config(arch="coba")
    assert (ping.n_e, ping.n_i, ping.n_input, ping.n_out) == (800, 200, 784, 10)
    assert ping.ei_strength == 0.05 and coba.ei_strength == 0.0
    assert ping.v_grad_dampen == 1000.0 and coba.v_grad_dampen == 1.0
    assert ping.n_steps == 2000 and ping.trainable == ("W_in", "W_out")
    assert Config(arch="ping", v_grad_dampen=10.0).v_grad_dampen == 10.0


def test_dampening_follows_the_closed_loop_not_the_arch_label():
    """MODEL.md defines PING by ei > 0 and ie > 0: an arch="ping" net with either side
    cut trains like COBA (dampening 1), and the stored config says which was used."""
    assert Config(arch="ping", ei_strength=0.0).v_grad_dampen == 1.0
    assert Config(arch="ping", ie_strength=0.0).v_grad_dampen == 1.0
    assert Config(arch="ping", ei_strength=0.0125, ie_strength=0.25).v_grad_dampen == 1000.0
    assert not Config(arch="ping", ei_strength=0.0).loop_closed and Config(arch="ping").loop_closed
    assert Config(arch="ping", ei_strength=0.0, v_grad_dampen=1000.0).v_grad_dampen == 1000.0  # explicit wins
    stored = json.loads(Config(arch="ping", ei_strength=0.0).to_json())
    assert stored["v_grad_dampen"] == 1.0


def test_keyword_overrides_accept_torch_dtype():
    config = Config(n_e=80, n_i=20, dtype=torch.float64)
    assert config.dtype == "float64" and config.torch_dtype is torch.float64


def test_json_round_trip_is_exact():
    config = Config(arch="coba", n_e=80, trainable=["W_in", "W_out", "W_ie"], dtype=torch.float64, seed=7)
    text = config.to_json()
    assert Config.from_json(text) == config
    assert json.loads(text)["trainable"] == ["W_in", "W_out", "W_ie"]


@pytest.mark.parametrize("fields, field, message", [
    ({"ei_strength": -1}, "ei_strength", "ei_strength must be >= 0, got -1"),
    ({"n_e": 0}, "n_e", "n_e must be > 0, got 0"),
    ({"n_e": 1.5}, "n_e", "n_e must be an integer, got 1.5"),
    ({"arch": "hh"}, "arch", "arch must be one of ['ping', 'coba'], got 'hh'"),
    ({"tier": "huge"}, "tier", None),
    ({"dt_ms": float("nan")}, "dt_ms", "dt_ms must be finite, got nan"),
    ({"p_ei": 1.5}, "p_ei", "p_ei must be in [0, 1], got 1.5"),
    ({"trainable": ["W_x"]}, "trainable", None),
    ({"arch": "coba", "ei_strength": 0.1}, "ei_strength", None),
    ({"v_grad_dampen": 0.5}, "v_grad_dampen", None),
    ({"device": "tpu"}, "device", None),
    ({"detach_reset": "yes"}, "detach_reset", None),
    ({"lr": "fast"}, "lr", None),
])
def test_invalid_configs_name_the_field(fields, field, message):
    with pytest.raises(ConfigError) as err:
        Config(**fields)
    assert err.value.field == field
    if message:
        assert str(err.value) == message


def test_unknown_json_field_is_rejected_by_name():
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"arch": "ping", "n_exc": 10})
    assert err.value.field == "n_exc"


def test_replace_re_resolves_the_dampening_with_the_loop():
    """The stored dampening follows the loop; a copy that opens or closes the loop
    must not keep the old loop's value (unless it was set explicitly)."""
    ping = Config()
    assert ping.v_grad_dampen == 1000.0
    assert ping.replace(ei_strength=0.0).v_grad_dampen == 1.0
    assert ping.replace(arch="coba") == Config(arch="coba")
    assert Config(arch="coba").replace(arch="ping") == Config()
    assert Config(v_grad_dampen=50.0).replace(ei_strength=0.0).v_grad_dampen == 50.0


def test_reading_a_config_does_not_import_torch():
    # the CLI's remote commands and the HTTP client build configs; torch costs them seconds
    import subprocess
    import sys

    code = ("import sys, engine, engine.config as c; cfg = c.Config(arch='coba', epochs=3); "
            "cfg = c.Config.from_json(cfg.to_json()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_dtypes_are_accepted_and_stored_by_name():
    import torch

    assert Config(dtype=torch.float64).dtype == "float64"
    assert Config(dtype="float64").torch_dtype is torch.float64
    with pytest.raises(ConfigError, match="dtype"):
        Config(dtype=torch.int32)
