"""ForceConfig: JSON round trip, task-resolved defaults, one error per bad field."""

import pytest

from engine.config import ConfigError
from engine.force.config import ForceConfig


def test_round_trip_is_explicit():
    config = ForceConfig(task="lorenz", n=300)
    again = ForceConfig.from_json(config.to_json())
    assert again == config
    assert config.tau_d_ms == 100.0 and ForceConfig().tau_d_ms == 20.0  # FORCE.md: Lorenz 100 ms
    assert ForceConfig().freq_hz == 5.0 and config.freq_hz is None


def test_steps_follow_the_phases():
    config = ForceConfig(warmup_s=1.0, learn_s=5.0, test_s=2.0)
    assert (config.warmup_steps, config.learn_steps, config.test_steps) == (20000, 100000, 40000)
    assert config.dt_s == pytest.approx(5e-5) and config.trace_every == 20


@pytest.mark.parametrize("fields, field", [
    ({"n": 0}, "n"), ({"p": 0.0}, "p"), ({"alpha": -1.0}, "alpha"), ({"task": "xor"}, "task"),
    ({"encoder": "gauss"}, "encoder"), ({"dt_ms": float("nan")}, "dt_ms"), ({"v_peak_mv": -70.0}, "v_peak_mv"),
    ({"update_every": 1.5}, "update_every"), ({"test_s": 0.0}, "test_s"), ({"dtype": "float16"}, "dtype"),
    ({"device": "tpu"}, "device"), ({"n": True}, "n"), ({"bogus": 1}, "bogus"),
])
def test_bad_field_is_named(fields, field):
    with pytest.raises(ConfigError) as caught:
        ForceConfig.from_dict(fields)
    assert caught.value.field == field
