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


def force_run(experiment: str, seconds: float, units: float, device: str = "cpu", dtype: str = "float32",
              **params):
    return experiment, {"config": {"device": device, "dtype": dtype}, **params}, seconds, units


def test_a_force_estimate_goes_by_the_same_experiment_then_any_that_runs_at_a_comparable_speed():
    from app.dashboard.estimate import ForceCalibration

    calibration = ForceCalibration.from_runs([
        force_run("train", 10.0, 1e10), force_run("train", 30.0, 1e10),  # median pace 2e-9 s per unit
        force_run("grid", 100.0, 1e10),  # another experiment: used only when no train run finished
        force_run("train", 1.0, 1e10, device="cuda:0"),  # a GPU: its own pace
        force_run("grid", 1.0, 1e10, processes=8),  # 8 processes finish the work faster: not for 1
        force_run("train", 0.0, 1e10)])  # no time: ignored
    cpu = {"config": {"device": "cpu", "dtype": "float32"}}
    assert calibration.describe("train", cpu, 3e11).startswith(
        "Time once it starts: about 10 min, at the pace of 2 finished run(s) of the train experiment on this "
        "server (cpu, float32, compiled).")
    assert calibration.describe("grid", {**cpu, "processes": 1}, 3e11).startswith(
        "Time once it starts: about 50 min, at the pace of 1 finished run(s) of the grid experiment")
    assert calibration.describe("size", cpu, 3e11).startswith(  # the median of 1, 3 and 10 ns per unit
        "Time once it starts: about 15 min, at the pace of 3 finished run(s) of other FORCE experiments")
    assert calibration.describe("train", {"config": {"device": "cuda", "dtype": "float32"}}, 3e11).startswith(
        "Time once it starts: about 30 s, at the pace of 1 finished run(s) of the train experiment on this "
        "server (cuda, float32, reference).")
    assert calibration.describe("grid", {**cpu, "processes": 8}, 3e11).startswith(
        "Time once it starts: about 30 s, at the pace of 1 finished run(s) of the grid experiment on this "
        "server (cpu, float32, compiled, 8 processes)")
    assert calibration.describe("train", {"config": {"device": "cpu", "dtype": "float64"}}, 3e11) == (
        "Time once it starts: no estimate yet, as no FORCE run on cpu, float64, compiled has finished on this "
        "server (a short train run gives the first).")
    reference = {"config": {"device": "cpu", "dtype": "float32", "backend": "reference"}}
    assert calibration.describe("train", reference, 3e11).startswith("Time once it starts: no estimate yet")
