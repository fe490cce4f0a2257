"""The Studies page's cost estimate: calibrated per backend from measured epochs."""

from app.dashboard.estimate import Calibration, estimate, format_duration, work_units
from engine.config import Config


def config(**changes) -> dict:
    return Config(**changes).to_dict()


def test_time_scales_with_images_steps_cells_and_epochs_per_backend():
    small = config(tier="smoke", n_e=40, n_i=10, t_ms=20.0, epochs=2)
    calibration = Calibration.from_epochs([(small, {"epoch_s": 2.0}), (small, {"epoch_s": 4.0})])
    per_unit = 3.0 / work_units(small)  # the median of the two
    big = config(tier="medium", epochs=100)  # 4x the images, 10x the steps, 20x the cells
    cost = estimate([big] * 6, calibration, workers=2)
    assert cost.runs == 6 and cost.epochs == 600 and cost.measured_runs == 2
    assert cost.seconds == 6 * 100 * work_units(big) * per_unit / 2
    assert work_units(big) == 800 * work_units(small)
    assert "about" in cost.describe() and "2 run(s) at once" in cost.describe()


def test_no_estimate_without_a_measurement_on_the_plans_backend():
    measured = config(tier="smoke", backend="reference")
    cost = estimate([config(backend="fast")], Calibration.from_epochs([(measured, {"epoch_s": 9.0})]), workers=1)
    assert cost.seconds is None and "no epoch measured on the fast backend" in cost.describe()
    assert "no worker slots" in estimate([config()], Calibration({}, {}), workers=0).describe()


def test_durations_read_naturally():
    assert [format_duration(s) for s in (42, 600, 5 * 3600, 5 * 86400)] == ["42 s", "10 min", "5.0 h", "5.0 days"]
