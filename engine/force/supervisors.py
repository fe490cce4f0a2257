"""The supervisors (targets) of FORCE.md's tasks, sampled at every time step.

`make_supervisor(config)` returns the target f(t) for every step of the run
(warm-up, learning and test), and for the tasks that drive the network, the
input u(t) it receives through its own encoder. ODE targets are integrated with
RK4 on a grid 10x coarser than dt and interpolated (they are smooth on that scale).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from engine.force.config import ForceConfig
from engine.seeding import derive_seed

ODE_SUBSAMPLE = 10
FOURIER_HARMONICS = 9
HDTS_BUMPS = 16
# Ode to Joy, two phrases: (note, beats). Notes are the output dimensions C D E F G.
_NOTES = "CDEFG"
_ODE_TO_JOY = ("E1 E1 F1 G1 G1 F1 E1 D1 C1 C1 D1 E1 E1.5 D0.5 D2 "
               "E1 E1 F1 G1 G1 F1 E1 D1 C1 C1 D1 E1 D1.5 C0.5 C2").split()
BEAT_S = 0.25
PITCHFORK_TAU_S = 0.01
PULSE_AMPLITUDE = 2.0  # flips the pitchfork's state (|u| > 2 / 3^1.5 is needed)
PULSE_INTERVAL_S = 0.5  # mean time between pulses


@dataclass(frozen=True)
class Supervisor:
    target: np.ndarray  # (n_steps, k)
    inputs: np.ndarray | None  # (n_steps, m) or None

    @property
    def k(self) -> int:
        return self.target.shape[1]

    @property
    def m(self) -> int:
        return 0 if self.inputs is None else self.inputs.shape[1]


def make_supervisor(config: ForceConfig) -> Supervisor:
    t = np.arange(1, config.n_steps + 1) * config.dt_s
    make = _TASKS[config.task]
    target, inputs = make(t, config)
    target = np.asarray(target, dtype=np.float64).reshape(len(t), -1)
    return Supervisor(target, None if inputs is None else np.asarray(inputs, np.float64).reshape(len(t), -1))


def _sine(t, c):
    return np.sin(2 * np.pi * c.freq_hz * t), None


def _sum_of_sines(t, c):
    return np.sin(2 * np.pi * t) + np.sin(4 * np.pi * t), None


def _product_of_sines(t, c):
    return np.sin(8 * np.pi * t) * np.sin(12 * np.pi * t), None


def _sawtooth(t, c):
    phase = (t * c.freq_hz) % 1.0
    return 2.0 * phase - 1.0, None


def _rk4(rhs, x0: np.ndarray, t_model: np.ndarray) -> np.ndarray:
    """States at the (uniform) model times t_model, starting from x0 at t_model[0]."""
    h = t_model[1] - t_model[0]
    out = np.empty((len(t_model), len(x0)))
    x = np.asarray(x0, dtype=np.float64)
    for i in range(len(t_model)):
        out[i] = x
        k1 = rhs(x)
        k2 = rhs(x + 0.5 * h * k1)
        k3 = rhs(x + 0.5 * h * k2)
        k4 = rhs(x + h * k3)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return out


def _ode_target(t: np.ndarray, scale: float, rhs, x0, transient: float) -> np.ndarray:
    """Integrate on a coarse grid in model time (t * scale), dropping a transient
    so the target starts on the attractor, then interpolate onto t."""
    coarse_t = np.arange(0.0, t[-1] + transient + ODE_SUBSAMPLE * (t[1] - t[0]), ODE_SUBSAMPLE * (t[1] - t[0]))
    states = _rk4(rhs, np.asarray(x0, float), coarse_t * scale)
    shifted = coarse_t - transient
    return np.stack([np.interp(t, shifted, states[:, j]) for j in range(states.shape[1])], axis=1)


@functools.cache
def vdp_period(mu: float) -> float:
    """The limit cycle's period in model time, measured between upward zero
    crossings of x after the transient (2 pi only in the harmonic limit mu -> 0:
    6.38 at mu 0.5, 11.6 at mu 5)."""
    h = 2e-3  # RK4 step: the fastest rate on the cycle is about 3 mu (the jumps), so h 3 mu << 1 up to mu ~ 20
    t = np.arange(0.0, 8.0 * max(2 * np.pi, 2.4 * mu), h)  # about 8 periods: 4 of transient, 4 measured
    x = _rk4(lambda s: np.array([mu * (s[0] - s[0] ** 3 / 3.0 - s[1]), s[0] / mu]), np.array([2.0, 0.0]), t)[:, 0]
    up = np.nonzero((x[:-1] < 0) & (x[1:] >= 0))[0]
    times = t[up] - x[up] * h / (x[up + 1] - x[up])
    return float((times[-1] - times[len(times) // 2]) / (len(times) - 1 - len(times) // 2))


def _vdp(mu: float):
    def make(t, c):
        # Lienard form, with model time scaled so the limit cycle's period is 1 / freq_hz
        # at any mu (2 pi freq t would give that only in the harmonic limit).
        def rhs(x):
            return np.array([mu * (x[0] - x[0] ** 3 / 3.0 - x[1]), x[0] / mu])

        states = _ode_target(t, vdp_period(mu) * c.freq_hz, rhs, [2.0, 0.0], transient=2.0 / c.freq_hz)
        return states[:, 0] / 2.0, None  # the limit cycle spans about [-2, 2]
    return make


def _lorenz(t, c):
    sigma, beta, rho = 5.0, 7.0 / 3.0, 28.0  # as in the study (FORCE.md)

    def rhs(x):
        return np.array([sigma * (x[1] - x[0]), x[0] * (rho - x[2]) - x[1], x[0] * x[1] - beta * x[2]])

    states = _ode_target(t, c.lorenz_speed, rhs, [1.0, 1.0, 25.0], transient=5.0 / c.lorenz_speed)
    centred = states - states.mean(axis=0)
    return centred / np.abs(centred).max(axis=0), None


def _fourier(t, c):
    rng = np.random.default_rng(derive_seed(c.seed, "force-fourier"))
    amplitudes = rng.uniform(0.0, 1.0, FOURIER_HARMONICS)
    phases = rng.uniform(0.0, 2 * np.pi, FOURIER_HARMONICS)
    harmonics = np.arange(1, FOURIER_HARMONICS + 1)
    f = (amplitudes * np.sin(2 * np.pi * c.freq_hz * np.outer(t, harmonics) + phases)).sum(axis=1)
    return f / np.abs(f).max(), None


def _ode_to_joy(t, c):
    """Each note is a half-sine bump on its pitch's dimension for its duration; the
    network is told where it is in the song by an HDTS: 16 bumps tiling the song."""
    starts, durations, pitches = [], [], []
    clock = 0.0
    for token in _ODE_TO_JOY:
        beats = float(token[1:])
        starts.append(clock)
        durations.append(beats * BEAT_S)
        pitches.append(_NOTES.index(token[0]))
        clock += beats * BEAT_S
    song_s = clock
    phase = t % song_s
    target = np.zeros((len(t), len(_NOTES)))
    for start, duration, pitch in zip(starts, durations, pitches):
        inside = (phase >= start) & (phase < start + duration)
        target[inside, pitch] = np.sin(np.pi * (phase[inside] - start) / duration)
    width = song_s / HDTS_BUMPS
    hdts = np.zeros((len(t), HDTS_BUMPS))
    slot = np.minimum((phase // width).astype(int), HDTS_BUMPS - 1)
    hdts[np.arange(len(t)), slot] = np.abs(np.sin(np.pi * (phase - slot * width) / width))
    return target, hdts


def _pitchfork(t, c):
    """dx/dt = (x - x^3 + u) / 10 ms, driven by 5-10 ms pulses of random sign."""
    rng = np.random.default_rng(derive_seed(c.seed, "force-pitchfork"))
    dt = t[1] - t[0]
    u = np.zeros(len(t))
    clock = rng.exponential(PULSE_INTERVAL_S)
    while clock < t[-1]:
        width = rng.uniform(0.005, 0.010)
        u[(t >= clock) & (t < clock + width)] = PULSE_AMPLITUDE * rng.choice((-1.0, 1.0))
        clock += width + rng.exponential(PULSE_INTERVAL_S)
    x = np.empty(len(t))
    state = 1.0
    for i in range(len(t)):  # forward Euler at dt (dt << 10 ms)
        state += dt * (state - state ** 3 + u[i]) / PITCHFORK_TAU_S
        x[i] = state
    return x, u


_TASKS = {
    "sine": _sine, "sum_of_sines": _sum_of_sines, "product_of_sines": _product_of_sines,
    "sawtooth": _sawtooth, "vdp_harmonic": _vdp(0.5), "vdp_relaxation": _vdp(5.0), "lorenz": _lorenz,
    "fourier": _fourier, "ode_to_joy": _ode_to_joy, "pitchfork": _pitchfork,
}
