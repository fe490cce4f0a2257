"""FORCE experiments, each a function of (validated params, ResultWriter).

`run_experiment(name, params, out_dir, on_progress, should_stop)` is the one
entry point for jobs and the CLI (same shape as engine.analyses.registry's
`run_analysis`). Every experiment's params hold `config` (ForceConfig fields
overriding the experiment's defaults) and its own keys; `EXPERIMENTS[name].validate`
checks them once and returns them complete, which is what is stored with the run.
The result structure of each experiment is documented in docs/force.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.config import ConfigError
from engine.force import measures
from engine.force.config import NETWORKS, ForceConfig
from engine.force.grid import run_grid
from engine.force.results import ResultWriter
from engine.force.simulate import Setup, Trained, learn, make_setup, test


class ExperimentError(ConfigError):
    """Bad experiment name or parameter; `field` names it (config fields as config.<name>)."""


# --- parameter checks -------------------------------------------------------------------
def _numbers(params: dict, key: str, low: float, high: float, max_len: int, integer: bool = False) -> list:
    values = params[key]
    if not isinstance(values, list) or not 1 <= len(values) <= max_len:
        raise ExperimentError(key, f"must be a list of 1 to {max_len} numbers")
    kinds = (int,) if integer else (int, float)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, kinds) or not low <= v <= high:
            raise ExperimentError(key, f"entries must be {'integers' if integer else 'numbers'} in "
                                       f"[{low}, {high}], got {v!r}")
    return [int(v) if integer else float(v) for v in values]


def _integer(params: dict, key: str, low: int, high: int) -> int:
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise ExperimentError(key, f"must be an integer in [{low}, {high}], got {v!r}")
    return v


def _number(params: dict, key: str, low: float, high: float) -> float:
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
        raise ExperimentError(key, f"must be a number in [{low}, {high}], got {v!r}")
    return float(v)


def _networks(params: dict) -> list[str]:
    values = params["networks"]
    if not isinstance(values, list) or not values or any(v not in NETWORKS for v in values) \
            or len(set(values)) != len(values):
        raise ExperimentError("networks", f"must be a non-empty list of distinct names from {list(NETWORKS)}")
    return list(values)


def _config(params: dict, defaults: dict) -> dict:
    overrides = params["config"]
    if not isinstance(overrides, dict):
        raise ExperimentError("config", "must be an object of ForceConfig fields")
    try:
        return ForceConfig.from_dict({**defaults, **overrides}).to_dict()
    except ConfigError as exc:
        raise ExperimentError(f"config.{exc.field}", exc.message) from exc
    except TypeError as exc:
        raise ExperimentError("config", str(exc)) from exc


# --- shared pieces -----------------------------------------------------------------------
def _network_result(setup: Setup, tested, b: int) -> dict:
    c = setup.config
    return measures.network_result(float(tested.sq_error[b]), c.test_steps, c.dt_s, setup.supervisor.k,
                                   float(tested.end_rate_hz[b]))


def _traces(setup: Setup, trained: Trained | None, tested, b: int) -> np.ndarray:
    """The readout of batch element b at every trace_every-th step of the phases given."""
    parts = ([trained.outputs[:, b]] if trained is not None else []) + ([tested.outputs[:, b]] if tested else [])
    return torch.cat(parts).cpu().numpy()[::setup.config.trace_every]


def _time_axis(setup: Setup, n: int) -> tuple[np.ndarray, np.ndarray]:
    c = setup.config
    steps = np.arange(0, c.n_steps, c.trace_every)[:n]
    return (steps + 1) * c.dt_s, setup.supervisor.target[steps]


def _phases(c: ForceConfig) -> dict:
    return {"warmup_s": c.warmup_s, "learn_s": c.learn_s, "test_s": c.test_s, "dt_s": c.dt_s,
            "trace_dt_s": c.trace_every * c.dt_s}


def _train_pair(config: ForceConfig, networks: list[str], alphas: list[float], writer: ResultWriter,
                live_traces: bool = False, extra_tests: int = 0) -> dict[str, tuple[Setup, Trained, Any]]:
    """Learn and test each network type on a batch of alphas at the config's (Q, G);
    progress counts `extra_tests` more test phases that the caller runs after."""
    out = {}
    batch = len(alphas)
    setup0 = make_setup(config, [config.g] * batch, [config.q] * batch)
    steps_total = len(networks) * config.n_steps + extra_tests * config.test_steps
    for i, network in enumerate(networks):
        offset = i * config.n_steps
        ticker = writer.step_ticker(steps_total, offset)
        buffer = torch.empty(config.warmup_steps + config.learn_steps, batch, setup0.supervisor.k,
                             dtype=config.torch_dtype, device=config.device)

        def tick(done: int, network=network, buffer=buffer, ticker=ticker) -> None:
            if live_traces and done <= len(buffer):
                _save_live(writer, setup0, network, buffer[:done, 0].cpu().numpy())
            ticker(done)

        trained = learn(network, setup0, alphas, tick=tick, outputs=buffer)
        tested = test(network, setup0, trained, tick=ticker)
        out[network] = (setup0, trained, tested)
    return out


def _extra_test_ticker(w: ResultWriter, config: ForceConfig, i: int):
    """Progress of the i-th extra test phase after a `_train_pair` of both networks."""
    learned = config.warmup_steps + config.learn_steps
    return w.step_ticker(2 * config.n_steps + 2 * config.test_steps, 2 * config.n_steps + i * config.test_steps - learned)


def _save_live(writer: ResultWriter, setup: Setup, network: str, z: np.ndarray) -> None:
    z = z[::setup.config.trace_every]
    t, f = _time_axis(setup, len(z))
    writer.save_npz(f"traces_{network}.npz", t_s=t, target=f, output=z)


# --- experiments -------------------------------------------------------------------------
def train_run(params: dict, w: ResultWriter) -> None:
    config = ForceConfig.from_dict(params["config"])
    pair = _train_pair(config, params["networks"], [config.alpha], w, live_traces=True)
    w.result.update({"phases": _phases(config), "networks": {}})
    decoders = {}
    for network, (setup, trained, tested) in pair.items():
        z = _traces(setup, trained, tested, 0)
        t, f = _time_axis(setup, len(z))
        w.save_npz(f"traces_{network}.npz", t_s=t, target=f, output=z)
        result = _network_result(setup, tested, 0)
        test_z = tested.outputs[:, 0, 0].double().cpu().numpy()
        finite = bool(np.isfinite(test_z).all())
        result.update(frequency_hz=measures.dominant_frequency(test_z, config.dt_s) if finite else None,
                      amplitude=float((test_z.max() - test_z.min()) / 2) if finite else None)
        w.result["networks"][network] = result
        decoders[f"phi_{network}"] = trained.rls.phi[0].cpu().numpy()
    w.save_npz("decoders.npz", **decoders)
    if len(decoders) == 2:
        w.result["decoder_fit"] = measures.decoder_fit(decoders["phi_lif"], decoders["phi_rate"])


def alpha_run(params: dict, w: ResultWriter) -> None:
    """Slow vs fast alpha, both network types, same (Q, G) and seed; alphas batched."""
    config = ForceConfig.from_dict(params["config"])
    alphas = params["alphas"]
    pair = _train_pair(config, ["lif", "rate"], alphas, w)
    rows = []
    for b, alpha in enumerate(alphas):
        row = {"alpha": alpha}
        for network, (setup, trained, tested) in pair.items():
            row[network] = _network_result(setup, tested, b)
        phi_lif, phi_rate = (pair[n][1].rls.phi[b].cpu().numpy() for n in ("lif", "rate"))
        row["decoder_fit"] = measures.decoder_fit(phi_lif, phi_rate)
        w.save_npz(f"decoders_alpha{b}.npz", phi_lif=phi_lif, phi_rate=phi_rate)
        rows.append(row)
    w.result.update(phases=_phases(config), q=config.q, g=config.g, rows=rows)


def transfer_run(params: dict, w: ResultWriter) -> None:
    """Decoders learned by each twin, tested in both (from each receiver's post-learning state)."""
    config = ForceConfig.from_dict(params["config"])
    pair = _train_pair(config, ["lif", "rate"], [config.alpha], w, extra_tests=2)
    phis = {n: pair[n][1].rls.phi for n in pair}
    cells = []
    for i, receiver in enumerate(("lif", "rate")):
        setup, trained, own = pair[receiver]
        donor = "rate" if receiver == "lif" else "lif"
        swapped = test(receiver, setup, trained, phis[donor], tick=_extra_test_ticker(w, config, i))
        steps = np.arange(config.warmup_steps + config.learn_steps, config.n_steps, config.trace_every)
        w.save_npz(f"transfer_{donor}_to_{receiver}.npz", t_s=(steps + 1) * config.dt_s,
                   target=setup.supervisor.target[steps], output=_traces(setup, None, swapped, 0),
                   own_output=_traces(setup, None, own, 0))
        cells.append({"decoders": receiver, "network": receiver, **_network_result(setup, own, 0)})
        cells.append({"decoders": donor, "network": receiver, **_network_result(setup, swapped, 0)})
    phi_lif, phi_rate = phis["lif"][0].cpu().numpy(), phis["rate"][0].cpu().numpy()
    w.save_npz("decoders.npz", phi_lif=phi_lif, phi_rate=phi_rate)
    w.result.update(phases=_phases(config), cells=cells, decoder_fit=measures.decoder_fit(phi_lif, phi_rate))


def size_run(params: dict, w: ResultWriter) -> None:
    """Error and decoder correlation against N; one unit (resumable) per N."""
    base = ForceConfig.from_dict(params["config"])
    rows = w.result.setdefault("rows", [])
    done = {row["n"] for row in rows}
    w.units_done = len(done)
    for n in params["n_values"]:
        if n in done:
            continue
        pair = _train_pair(base.replace(n=n), ["lif", "rate"], [base.alpha], w)
        row = {"n": n, **{net: _network_result(s, te, 0) for net, (s, _, te) in pair.items()}}
        row["decoder_fit"] = measures.decoder_fit(pair["lif"][1].rls.phi.cpu().numpy(), pair["rate"][1].rls.phi.cpu().numpy())
        rows.append(row)
        w.unit_done()
    w.result["rows"] = sorted(rows, key=lambda row: row["n"])


def bias_variance_run(params: dict, w: ResultWriter) -> None:
    """Repeated test trials from the post-learning state, each trial perturbed
    (LIF: voltages +- jitter_mv; rate: rates x (1 +- jitter_frac)); trials are the batch."""
    config = ForceConfig.from_dict(params["config"])
    trials = params["trials"]
    pair = _train_pair(config, ["lif", "rate"], [config.alpha], w, extra_tests=2)
    generator = torch.Generator().manual_seed(config.seed + 1)
    w.result.update(phases=_phases(config), trials=trials, networks={})
    for i, (network, (setup, trained, _)) in enumerate(pair.items()):
        trial_setup = make_setup(config, [config.g] * trials, [config.q] * trials, setup.supervisor, setup.weights)
        state = _perturbed(trained.state, trials, params, generator)
        tested = test(network, trial_setup, trained, trained.rls.phi.expand(trials, -1, -1), state=state,
                      tick=_extra_test_ticker(w, config, i))
        start = config.warmup_steps + config.learn_steps
        outputs = tested.outputs.double().cpu().numpy().transpose(1, 0, 2)  # (trials, T, k)
        split = measures.bias_variance(outputs, setup.supervisor.target[start:])
        errors = [_network_result(trial_setup, tested, b)["test_error"] for b in range(trials)]
        w.result["networks"][network] = {**split, "test_errors": errors}
        w.save_npz(f"trials_{network}.npz", output=outputs[:, ::config.trace_every],
                   target=setup.supervisor.target[start::config.trace_every])


def _perturbed(state, trials: int, params: dict, generator: torch.Generator):
    fields = {name: value.expand(trials, -1).clone() for name, value in state._asdict().items()}
    noise = (2 * torch.rand(fields["r"].shape, generator=generator, dtype=fields["r"].dtype) - 1).to(fields["r"].device)
    if "v" in fields:
        fields["v"] = fields["v"] + params["jitter_mv"] * noise
    else:
        fields["r"] = fields["r"] * (1 + params["jitter_frac"] * noise)
    return type(state)(**fields)


def pca_run(params: dict, w: ResultWriter) -> None:
    """PCA of the filtered rates at the RLS updates, the decoders in that basis, and
    the per-PC gain alpha / (1 + alpha M lambda) beside P's own diagonal in that basis."""
    config = ForceConfig.from_dict(params["config"])
    keep = min(params["components"], config.n)
    w.result.update(phases=_phases(config), networks={})
    setup = make_setup(config, [config.g], [config.q])
    for i, network in enumerate(("lif", "rate")):
        trained = learn(network, setup, [config.alpha], sample_rates=True,
                        tick=w.step_ticker(2 * (config.warmup_steps + config.learn_steps),
                                                  i * (config.warmup_steps + config.learn_steps)))
        if trained.rate_samples is None:
            raise ExperimentError("config.learn_s", "must be long enough for at least one RLS update")
        rates = trained.rate_samples[:, 0].double().cpu().numpy()
        values, vectors = measures.pca(rates)
        P, phi = trained.rls.P[0].cpu().numpy(), trained.rls.phi[0].cpu().numpy()
        p_diag = np.einsum("ia,ij,ja->a", vectors[:, :keep], P, vectors[:, :keep])
        gains = {str(a): measures.rls_gain(a, trained.rls.updates, values[:keep]).tolist() for a in params["alphas"]}
        w.save_npz(f"pca_{network}.npz", eigenvalues=values, decoder_pc=(vectors.T @ phi)[:keep],
                   p_diag_pc=p_diag, components=vectors[:, :keep])
        w.result["networks"][network] = {
            "updates": trained.rls.updates, "eigenvalues": values[:keep].tolist(),
            "decoder_pc": (vectors.T @ phi)[:keep, 0].tolist(), "p_diag_pc": p_diag.tolist(),
            "gain": gains,
            "explained_top10": float(values[:10].sum() / values.sum()) if values.sum() > 0 else None}


def grid_run(params: dict, w: ResultWriter) -> None:
    run_grid(params, w)


# --- registry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str
    defaults: dict[str, Any]
    check: Callable[[dict], dict]
    execute: Callable[[dict, ResultWriter], None]
    units: Callable[[dict], int] = lambda params: 1

    def validate(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ExperimentError(unknown[0], f"is not a parameter of {self.name}")
        merged = {**self.defaults, **params}
        checked = self.check(merged)
        checked["config"] = _config(merged, self.defaults["config"])
        return checked


def _spec(name, description, execute, config=None, extra=None, check=None, units=None) -> ExperimentSpec:
    defaults = {"config": dict(config or {}), **(extra or {})}
    return ExperimentSpec(name, description, defaults, check or (lambda p: dict(p)), execute,
                          units or (lambda params: 1))


# The study's Q x G grid and reference point use p 0.4 and its encoder law.
_STUDY = {"p": 0.4, "encoder": "centred", "q": 20.0, "g": 0.125}
EXPERIMENTS: dict[str, ExperimentSpec] = {s.name: s for s in (
    _spec("train", "one FORCE training: target vs output traces, errors, decoders", train_run,
          extra={"networks": ["lif", "rate"]}, check=lambda p: {**p, "networks": _networks(p)}),
    _spec("alpha", "slow vs fast alpha for both twins: errors and decoder correlation", alpha_run, config=_STUDY,
          extra={"alphas": [5e-6, 5e-4]},
          check=lambda p: {**p, "alphas": _numbers(p, "alphas", 1e-12, 1e3, 8)}),
    _spec("grid", "Q x G grid: log10 test error per twin and decoder correlation per point", grid_run,
          config={"p": 0.4, "encoder": "centred"},
          extra={"q_values": [float(q) for q in np.linspace(2, 30, 8)],
                 "g_values": [float(g) for g in np.linspace(0, 0.2, 8)],
                 "networks": ["lif", "rate"], "batch": 8, "processes": 1},
          check=lambda p: {**p, "q_values": _numbers(p, "q_values", 0, 1e4, 100),
                           "g_values": _numbers(p, "g_values", 0, 1e4, 100), "networks": _networks(p),
                           "batch": _integer(p, "batch", 1, 4096), "processes": _integer(p, "processes", 1, 64)},
          units=lambda p: len(p["q_values"]) * len(p["g_values"])),
    _spec("transfer", "decoders swapped between the twins, both directions", transfer_run, config=_STUDY),
    _spec("size", "error and decoder correlation against N", size_run, config=_STUDY,
          extra={"n_values": [250, 500, 1000, 2000]},
          check=lambda p: {**p, "n_values": sorted(set(_numbers(p, "n_values", 2, 20000, 20, integer=True)))},
          units=lambda p: len(p["n_values"])),
    _spec("bias_variance", "bias^2 and variance of the output over repeated test trials", bias_variance_run,
          config=_STUDY, extra={"trials": 10, "jitter_mv": 1.0, "jitter_frac": 0.01},
          check=lambda p: {**p, "trials": _integer(p, "trials", 2, 1000),
                           "jitter_mv": _number(p, "jitter_mv", 0, 100), "jitter_frac": _number(p, "jitter_frac", 0, 1)}),
    _spec("pca", "PCA of filtered rates, decoders per PC, RLS gain alpha / (1 + alpha M lambda)", pca_run,
          config=_STUDY, extra={"alphas": [5e-6, 5e-4], "components": 200},
          check=lambda p: {**p, "alphas": _numbers(p, "alphas", 1e-12, 1e3, 8),
                           "components": _integer(p, "components", 1, 20000)}),
)}


def validate(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    if name not in EXPERIMENTS:
        raise ExperimentError("experiment", f"must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name].validate(params)


def run_experiment(name: str, params: dict[str, Any] | None, out_dir: str | Path, *,
                   on_progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    params = validate(name, params)
    spec = EXPERIMENTS[name]
    writer = ResultWriter(Path(out_dir), name, params, spec.units(params), on_progress, should_stop)
    writer.save()
    spec.execute(params, writer)
    return writer.finish()
