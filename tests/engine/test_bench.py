"""`spikeboard bench` end to end at a toy size: every measurement in its own
process, interleaved repetitions, the ratios and the projected cell. It checks
the report, not the speed: timings on a shared machine belong in
docs/PERFORMANCE.md, never in an assertion."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from engine import bench


@pytest.fixture(scope="module")
def report() -> str:
    cmd = [sys.executable, "-m", "engine.bench", "--batch", "2", "--ref-batch", "1", "--steps", "20",
           "--reps", "2", "--infer-batch", "2", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_repetitions_are_interleaved_over_both_backends_and_modes(report):
    reps = re.findall(r"rep (\d)/2 +(reference|fast) (train|infer)", report)
    assert reps == [(rep, backend, mode) for rep in "12"
                    for backend, mode in (("reference", "train"), ("fast", "train"),
                                          ("reference", "infer"), ("fast", "infer"))]


def test_results_give_time_rate_and_memory_for_each_case(report):
    rows = re.findall(r"^  (reference|fast) (train step|inference) +batch +(\d+) x 20 steps: best +([\d.]+) s, "
                      r"median +([\d.]+) s .*?([\d]+) sample-steps/s, peak \+ *(\d+) MB$", report, re.M)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("reference", "train step", "1"), ("fast", "train step", "2"),
        ("reference", "inference", "2"), ("fast", "inference", "2")]
    for row in rows:
        assert 0 < float(row[3]) <= float(row[4])  # best <= median
        assert int(row[5]) > 0


def test_a_smaller_reference_batch_is_labelled_a_projection(report):
    assert re.search(r"PROJECTION: the reference training step was measured at batch 1; at batch 2", report)
    assert "(reference side projected)" in report


def test_ratios_and_projected_cell_are_reported(report):
    training = re.search(r"training speed-up at batch 2: best ([\d.]+)x, median ([\d.]+)x", report)
    memory = re.search(r"training peak memory: fast is 1/([\d.]+) of the reference", report)
    inference = re.search(r"inference speed-up at batch 2: best ([\d.]+)x, median ([\d.]+)x", report)
    assert training and memory and inference
    assert re.search(r"input encoding \(poisson_events, median\): [\d.]+ s per training batch of 2", report)
    cell = dict(re.findall(r"^  (reference|fast) *: +[\d.]+ s per epoch, +([\d.]+) h per run$", report, re.M))
    assert set(cell) == {"reference", "fast"} and all(float(h) > 0 for h in cell.values())


def test_reference_batch_is_halved_until_it_fits_in_memory():
    args = bench._parser().parse_args(["--batch", "256", "--steps", "2000"])
    batch = bench._reference_batch(args)
    assert batch * 2000 * bench._REF_BYTES_PER_SAMPLE_STEP <= bench._REF_MEMORY_LIMIT
    assert batch < 256 and 2 * batch * 2000 * bench._REF_BYTES_PER_SAMPLE_STEP > bench._REF_MEMORY_LIMIT
    explicit = bench._parser().parse_args(["--batch", "64", "--ref-batch", "8"])
    assert bench._reference_batch(explicit) == 8


@pytest.mark.slow
def test_gpu_comparison_reports_launches_times_and_projections():
    """`--device cuda`'s report, run on CPU through the Triton interpreter (minutes:
    the canonical network at 3 steps); on a GPU scripts/gpu_check.sh runs it for real."""
    import os

    cmd = [sys.executable, "-m", "engine.bench", "--gpu-comparison", "--device", "cpu", "--steps", "3",
           "--batch", "1", "--reps", "1", "--infer-batch", "1", "--pack", "2", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = done.stdout
    fused = re.search(r"fused +: +(\d+) Triton \+ +(\d+) torch ops", report)
    torch_ops = re.search(r"torch-op loop : +(\d+) Triton \+ +(\d+) torch ops", report)
    assert fused and torch_ops and int(fused[1]) == 3 and int(torch_ops[1]) == 0
    assert int(torch_ops[2]) > int(fused[1]) + int(fused[2])
    assert re.findall(r"rep 1/1 (fused train step|torch-op train step|fused train, 2 runs packed|fused inference)",
                      report) == ["fused train step", "torch-op train step", "fused train, 2 runs packed",
                                  "fused inference"]
    assert re.search(r"fused vs torch-op loop at batch 1: best [\d.]+x", report)
    assert re.search(r"fused +: +[\d.]+ min per run", report)
    assert re.search(r"2 cells packed in one job \(nb024\): +[\d.]+ min", report)
