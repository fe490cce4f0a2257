"""FORCE.md's measures: test error, RMSE, decoder correlation and slope,
bias^2 / variance over trials, dominant frequency, and the PCA of filtered rates
with the per-PC RLS gain alpha / (1 + alpha M lambda)."""

from __future__ import annotations

import math

import numpy as np

SUCCESS_CUTOFF = 5e-6


def test_error(sq_error_sum: float, n_steps: int, dt_s: float) -> float:
    """The study's: sqrt(sum_t ||f - z||^2 dt) / n_steps."""
    return math.sqrt(sq_error_sum * dt_s) / n_steps


def rmse(sq_error_sum: float, n_steps: int, k: int) -> float:
    """sqrt of the mean squared error over steps and output dimensions."""
    return math.sqrt(sq_error_sum / (n_steps * k))


def network_result(sq_error_sum: float, n_steps: int, dt_s: float, k: int, end_rate_hz: float) -> dict:
    """One network's test result. A run whose output became NaN or infinite is
    `diverged`: its error fields are NaN (null in result.json) and it is no success."""
    error = test_error(sq_error_sum, n_steps, dt_s) if math.isfinite(sq_error_sum) else math.nan
    diverged = not math.isfinite(error)
    return {"test_error": error, "log10_error": log10_or_none(error),
            "rmse": rmse(sq_error_sum, n_steps, k) if not diverged else math.nan,
            "success": (not diverged) and error < SUCCESS_CUTOFF, "diverged": diverged,
            "end_rate_hz": end_rate_hz}


def log10_or_none(x: float) -> float | None:
    return math.log10(x) if x > 0 and math.isfinite(x) else None


def decoder_fit(phi_a: np.ndarray, phi_b: np.ndarray) -> dict:
    """Pearson r and least-squares slope (b on a) of two decoder sets, all entries pooled."""
    a, b = np.ravel(phi_a).astype(float), np.ravel(phi_b).astype(float)
    if a.std() == 0 or b.std() == 0:
        return {"r": None, "slope": None}
    r = float(np.corrcoef(a, b)[0, 1])
    slope = float(np.dot(a - a.mean(), b - b.mean()) / np.dot(a - a.mean(), a - a.mean()))
    return {"r": r, "slope": slope}


def dominant_frequency(z: np.ndarray, dt_s: float) -> float:
    """Peak of the amplitude spectrum (Hz) of a (T,) signal, refined by the
    zero-padded FFT so the resolution is well below 1 / T."""
    z = np.asarray(z, float) - np.mean(z)
    n = 1 << int(math.ceil(math.log2(len(z) * 8)))
    spectrum = np.abs(np.fft.rfft(z * np.hanning(len(z)), n))
    return float(np.fft.rfftfreq(n, dt_s)[spectrum.argmax()])


def zero_crossing_frequency(z: np.ndarray, dt_s: float) -> float | None:
    """Cycles per second between the first and last upward zero crossings of
    z - mean(z), each located by linear interpolation; None with fewer than two."""
    x = np.asarray(z, float) - np.mean(z)
    up = np.nonzero((x[:-1] < 0) & (x[1:] >= 0))[0]
    if len(up) < 2:
        return None
    times = (up + x[up] / (x[up] - x[up + 1])) * dt_s
    return float((len(up) - 1) / (times[-1] - times[0]))


def bias_variance(outputs: np.ndarray, target: np.ndarray) -> dict:
    """outputs (trials, T, k), target (T, k): mean over time and dimensions of
    (trial mean - f)^2 and of the across-trial variance; they sum to the mean MSE."""
    mean = outputs.mean(axis=0)
    bias2 = float(((mean - target) ** 2).mean())
    variance = float(outputs.var(axis=0).mean())
    mse = float(((outputs - target[None]) ** 2).mean())
    return {"bias2": bias2, "variance": variance, "mse": mse}


def pca(rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the second-moment
    matrix of rates (M, N) sampled at the RLS updates: sum r r^T / M, what RLS inverts."""
    moment = rates.T @ rates / len(rates)
    values, vectors = np.linalg.eigh(moment)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def rls_gain(alpha: float, updates: int, eigenvalues: np.ndarray) -> np.ndarray:
    """alpha / (1 + alpha M lambda): P after M updates in the PC basis, when the
    rates' second moment is stationary (P^-1 = I / alpha + M C)."""
    return alpha / (1.0 + alpha * updates * np.asarray(eigenvalues))
