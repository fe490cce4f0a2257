"""Gamma spectrum of the population rate (MODEL.md "Analyses: Gamma spectrum")."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Spectrum:
    freqs_hz: list[float]
    power: list[float]
    peak_hz: float
    prominence: float  # peak power / median power, both within the band

    def to_dict(self) -> dict:
        return asdict(self)


def population_rate(spikes: torch.Tensor, dt_ms: float, bin_ms: float = 1.0) -> torch.Tensor:
    """Spikes [T, B, N] -> population rate in Hz per bin, [B, n_bins]."""
    steps_per_bin = int(round(bin_ms / dt_ms))
    n_bins = spikes.shape[0] // steps_per_bin
    counts = spikes[: n_bins * steps_per_bin].to(torch.float64)
    counts = counts.reshape(n_bins, steps_per_bin, *spikes.shape[1:]).sum(1)  # [bins, B, N]
    return (counts.mean(-1) / (bin_ms / 1000.0)).T


def gamma_spectrum(spikes: torch.Tensor, dt_ms: float, *, bin_ms: float = 1.0,
                   drop_ms: float = 50.0, band_hz: tuple[float, float] = (5.0, 250.0)) -> Spectrum:
    """Power spectrum of the population rate: 1 ms bins, first 50 ms dropped, Hann
    window, mean removed, power averaged over samples; peak and prominence in band."""
    rate = population_rate(spikes, dt_ms, bin_ms)[:, int(round(drop_ms / bin_ms)):]
    if rate.shape[1] < 8:
        raise ValueError(f"trial too short for a spectrum: {rate.shape[1]} bins after dropping {drop_ms} ms")
    rate = rate - rate.mean(dim=1, keepdim=True)
    window = torch.hann_window(rate.shape[1], periodic=False, dtype=torch.float64)
    power = torch.fft.rfft(rate * window, dim=1).abs().pow(2).mean(0)
    freqs = torch.fft.rfftfreq(rate.shape[1], d=bin_ms / 1000.0, dtype=torch.float64)
    in_band = (freqs >= band_hz[0]) & (freqs <= band_hz[1])
    band_power, band_freqs = power[in_band], freqs[in_band]
    median = band_power.median()
    peak = int(band_power.argmax())
    prominence = float(band_power[peak] / median) if median > 0 else 0.0
    return Spectrum(freqs_hz=band_freqs.tolist(), power=band_power.tolist(),
                    peak_hz=float(band_freqs[peak]), prominence=prominence)
