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
from engine.force.simulate import Setup, Trained, advance, learn, make_setup, test


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
    if not isinstance(values, list) or not values or any(not isinstance(v, str) or v not in NETWORKS for v in values) \
            or len(set(values)) != len(values):
        raise ExperimentError("networks", f"must be a non-empty list of distinct names from {list(NETWORKS)}")
    return list(values)


def _protocols(params: dict) -> list[str]:
    values = params["protocols"]
    # a name must be a string before the lookup: [["own"]] raised TypeError (unhashable)
    if not isinstance(values, list) or not values \
            or any(not isinstance(v, str) or v not in TRANSFER_PROTOCOLS for v in values) \
            or len(set(values)) != len(values):
        raise ExperimentError("protocols", f"must be a non-empty list of distinct names from {list(TRANSFER_PROTOCOLS)}")
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
                live_traces: bool = False, extra_tests: int = 0,
                extra_steps: int = 0) -> dict[str, tuple[Setup, Trained, Any]]:
    """Learn and test each network type on a batch of alphas at the config's (Q, G);
    progress counts `extra_tests` more test phases and `extra_steps` more steps that the caller runs after."""
    out = {}
    batch = len(alphas)
    setup0 = make_setup(config, [config.g] * batch, [config.q] * batch)
    steps_total = len(networks) * config.n_steps + extra_tests * config.test_steps + extra_steps
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


# Ways a twin's learned decoders can be moved into the other twin (the receiver); each runs
# closed loop from the end of learning. "feedback" is phi in the loop (z = phi^T r fed back through
# eta: the learned low-rank part of the recurrent weights), "readout" the phi the output is read with.
TRANSFER_PROTOCOLS = {
    # name: (feedback phi, readout phi, starting state), each "own" (the receiver's) or "donor"
    "own": ("own", "own", "own"),
    "swap_both": ("donor", "donor", "own"),  # the learned weights moved: phi in the loop and the readout
    "readout_only": ("own", "donor", "own"),  # decoders only: the receiver keeps its own loop
    "feedback_only": ("donor", "own", "own"),
    "swap_both_donor_state": ("donor", "donor", "donor"),  # and started from the donor's state
}


def _state_from(receiver: str, donor_state, own_state, setup: Setup):
    """The donor's post-learning state as a state of the receiver: the filtered rates (r, hr) are
    the same quantities in both twins; a LIF receiver's synaptic filters are omega r and omega hr
    (the identity networks.py's LIF step keeps), its voltages and refractory counts its own."""
    if receiver == "rate":
        return type(own_state)(donor_state.r.clone(), donor_state.hr.clone())
    g = setup.params.g[:, None]
    omega0 = setup.weights.omega0
    return own_state._replace(ipsc=g * (donor_state.r @ omega0.T), h=g * (donor_state.hr @ omega0.T),
                              r=donor_state.r.clone(), hr=donor_state.hr.clone())


def _closed_loop(network: str, setup: Setup, state, phi_feedback: torch.Tensor, phi_readout: torch.Tensor,
                 start: int, stop: int, tick=None) -> torch.Tensor:
    """Steps [start, stop) with phi_feedback in the loop; returns phi_readout^T r at every step
    (T, B, k). Both decoders are read out at once: eta gets zero columns for the readout's outputs,
    which feed nothing back (eta z + 0 z' is eta z exactly)."""
    k = phi_feedback.shape[2]
    w = setup.weights
    both = w._replace(eta0=torch.cat([w.eta0, torch.zeros_like(w.eta0)], dim=1))
    phi = torch.cat([phi_feedback, phi_readout], dim=2)
    z = torch.bmm(state.r.unsqueeze(1), phi.to(state.r.dtype)).squeeze(1)
    outputs = torch.empty(stop - start, setup.batch, 2 * k, dtype=state.r.dtype, device=state.r.device)
    advance(network, setup._replace(weights=both), state, z, phi, start, stop, outputs, tick)
    return outputs[:, :, k:]


def _window_result(z: np.ndarray, target: np.ndarray, dt_s: float) -> dict:
    """Errors, frequency and amplitude of a readout window z (T, k) against the target."""
    finite = bool(np.isfinite(z).all())
    sq = float(((z - target) ** 2).sum()) if finite else float("nan")
    result = measures.network_result(sq, len(z), dt_s, z.shape[1], 0.0)
    result.pop("end_rate_hz", None)
    result.update(frequency_hz=measures.zero_crossing_frequency(z[:, 0], dt_s) if finite else None,
                  amplitude=float((z[:, 0].max() - z[:, 0].min()) / 2) if finite else None)
    return result


def transfer_protocols_run(params: dict, w: ResultWriter) -> None:
    """Each twin's decoders moved into the other by every protocol of TRANSFER_PROTOCOLS, at each
    alpha (alphas x protocols are one batch per receiver); scored over the first test_s of the
    closed loop and over test_s after a run-in of run_in_s."""
    config = ForceConfig.from_dict(params["config"])
    alphas, names, run_in_s = params["alphas"], params["protocols"], params["run_in_s"]
    run_config = config.replace(test_s=config.test_s + run_in_s)
    start, stop = config.warmup_steps + config.learn_steps, run_config.n_steps
    pair = _train_pair(config, ["lif", "rate"], alphas, w, extra_steps=2 * (stop - start))
    batch = len(alphas) * len(names)
    cells = []
    for i, receiver in enumerate(("lif", "rate")):
        donor = "rate" if receiver == "lif" else "lif"
        setup0, trained, _ = pair[receiver]
        donor_trained = pair[donor][1]
        setup = make_setup(run_config, [config.g] * batch, [config.q] * batch, weights=setup0.weights)
        rows = [a for a in range(len(alphas)) for _ in names]  # batch row -> alpha row
        own_state = type(trained.state)(*(x[rows] for x in trained.state))
        donor_state = _state_from(receiver, type(donor_trained.state)(*(x[rows] for x in donor_trained.state)),
                                  own_state, setup)
        protocols = names * len(alphas)  # batch row -> protocol
        phis = {"own": trained.rls.phi[rows], "donor": donor_trained.rls.phi[rows]}
        pick = lambda slot: torch.stack([phis[TRANSFER_PROTOCOLS[n][slot]][j]  # noqa: E731
                                         for j, n in enumerate(protocols)]).contiguous()
        state = _mix_states({"own": own_state, "donor": donor_state}, protocols)
        ticker = w.step_ticker(2 * config.n_steps + 2 * (stop - start), 2 * config.n_steps + i * (stop - start) - start)
        z = _closed_loop(receiver, setup, state, pick(0), pick(1), start, stop, ticker).double().cpu().numpy()
        target = setup.supervisor.target[start:stop]
        run_in = stop - start - config.test_steps
        for j, name in enumerate(protocols):
            cells.append({"receiver": receiver, "donor": donor, "protocol": name, "alpha": alphas[rows[j]],
                          "first": _window_result(z[:config.test_steps, j], target[:config.test_steps], config.dt_s),
                          "after_run_in": _window_result(z[run_in:, j], target[run_in:], config.dt_s)})
        steps = np.arange(start, stop, config.trace_every)
        w.save_npz(f"protocols_{donor}_to_{receiver}.npz", t_s=(steps + 1) * config.dt_s,
                   target=setup.supervisor.target[steps], output=z[::config.trace_every].transpose(1, 0, 2),
                   protocols=np.array(protocols), alphas=np.array([alphas[r] for r in rows]))
    fits = [measures.decoder_fit(pair["lif"][1].rls.phi[a].cpu().numpy(), pair["rate"][1].rls.phi[a].cpu().numpy())
            for a in range(len(alphas))]
    w.result.update(phases={**_phases(config), "run_in_s": run_in_s}, alphas=alphas, protocols=names,
                    decoder_fit=fits, cells=cells)


def _mix_states(starts: dict, names: list[str]):
    """Row j of the batch from starts[own or donor] as protocol names[j] says."""
    own = starts["own"]
    return type(own)(*(torch.stack([getattr(starts[TRANSFER_PROTOCOLS[n][2]], field)[j] for j, n in enumerate(names)])
                       for field in own._fields))


def size_run(params: dict, w: ResultWriter) -> None:
    """Error and decoder correlation against N; one unit (resumable) per N. With `trials` > 0, each
    N's bias^2 and variance over that many perturbed repeats of the test phase too (as bias_variance)."""
    base = ForceConfig.from_dict(params["config"])
    trials = params["trials"]
    rows = w.result.setdefault("rows", [])
    done = {row["n"] for row in rows}
    w.units_done = len(done)
    for n in params["n_values"]:
        if n in done:
            continue
        config = base.replace(n=n)
        pair = _train_pair(config, ["lif", "rate"], [base.alpha], w, extra_tests=2 if trials else 0)
        row = {"n": n, **{net: _network_result(s, te, 0) for net, (s, _, te) in pair.items()}}
        row["decoder_fit"] = measures.decoder_fit(pair["lif"][1].rls.phi.cpu().numpy(), pair["rate"][1].rls.phi.cpu().numpy())
        if trials:
            generator = torch.Generator().manual_seed(config.seed + 1)
            row["bias_variance"] = {
                network: _trial_split(config, network, setup, trained, params, generator,
                                      _extra_test_ticker(w, config, i))[0]
                for i, (network, (setup, trained, _)) in enumerate(pair.items())}
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
        split, outputs = _trial_split(config, network, setup, trained, params, generator,
                                      _extra_test_ticker(w, config, i))
        w.result["networks"][network] = split
        start = config.warmup_steps + config.learn_steps
        w.save_npz(f"trials_{network}.npz", output=outputs[:, ::config.trace_every],
                   target=setup.supervisor.target[start::config.trace_every])


def _trial_split(config: ForceConfig, network: str, setup: Setup, trained: Trained, params: dict,
                 generator: torch.Generator, tick) -> tuple[dict, np.ndarray]:
    """bias^2, variance and each trial's test error over params["trials"] perturbed test phases
    (the trials are the batch); also the outputs (trials, T, k)."""
    trials = params["trials"]
    trial_setup = make_setup(config, [config.g] * trials, [config.q] * trials, setup.supervisor, setup.weights)
    state = _perturbed(trained.state, trials, params, generator)
    tested = test(network, trial_setup, trained, trained.rls.phi.expand(trials, -1, -1), state=state, tick=tick)
    start = config.warmup_steps + config.learn_steps
    outputs = tested.outputs.double().cpu().numpy().transpose(1, 0, 2)  # (trials, T, k)
    split = measures.bias_variance(outputs, setup.supervisor.target[start:])
    errors = [_network_result(trial_setup, tested, b)["test_error"] for b in range(trials)]
    return {**split, "test_errors": errors}, outputs


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
    work: Callable[[dict], float] = lambda params: _steps_n2(params, networks=2)

    def validate(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ExperimentError(unknown[0], f"is not a parameter of {self.name}")
        merged = {**self.defaults, **params}
        checked = self.check(merged)
        checked["config"] = _config(merged, self.defaults["config"])
        return checked


def _spec(name, description, execute, config=None, extra=None, check=None, units=None, work=None) -> ExperimentSpec:
    defaults = {"config": dict(config or {}), **(extra or {})}
    return ExperimentSpec(name, description, defaults, check or (lambda p: dict(p)), execute,
                          units or (lambda params: 1), work or (lambda params: _steps_n2(params, networks=2)))


# --- work: what an experiment's time scales with ---------------------------------------------
# Network-steps x N^2 over every network the experiment simulates (batch rows count once
# each): a rate step and an RLS update are N^2 products, so N^2 per step is the cost's shape
# (a LIF step pays only its spiking columns, which the per-experiment calibration absorbs).
def _steps_n2(params: dict, networks: int = 2, batch: int = 1, extra_test_rows: int = 0,
              extra_steps: int = 0) -> float:
    """`networks` networks of `batch` rows over warm-up, learning and test; then
    `extra_test_rows` more test phases and `extra_steps` more steps (of one row each)."""
    c = ForceConfig.from_dict(params["config"])
    return float(c.n) ** 2 * (networks * batch * c.n_steps + extra_test_rows * c.test_steps + extra_steps)


def _protocols_work(p: dict) -> float:
    c = ForceConfig.from_dict(p["config"])
    closed_loop = c.test_steps + int(round(p["run_in_s"] / c.dt_s))  # per receiver, per batch row
    return _steps_n2(p, batch=len(p["alphas"]), extra_steps=2 * closed_loop * len(p["alphas"]) * len(p["protocols"]))


def _size_work(p: dict) -> float:
    extra = 2 * p["trials"]
    return sum(_steps_n2({**p, "config": {**p["config"], "n": n}}, extra_test_rows=extra) for n in p["n_values"])


def _pca_work(p: dict) -> float:
    c = ForceConfig.from_dict(p["config"])
    return float(c.n) ** 2 * 2 * (c.warmup_steps + c.learn_steps)


# The study's Q x G grid and reference point use p 0.4 and its encoder law.
_STUDY = {"p": 0.4, "encoder": "centred", "q": 20.0, "g": 0.125}
EXPERIMENTS: dict[str, ExperimentSpec] = {s.name: s for s in (
    _spec("train", "one FORCE training: target vs output traces, errors, decoders", train_run,
          extra={"networks": ["lif", "rate"]}, check=lambda p: {**p, "networks": _networks(p)},
          work=lambda p: _steps_n2(p, networks=len(p["networks"]))),
    _spec("alpha", "slow vs fast alpha for both twins: errors and decoder correlation", alpha_run, config=_STUDY,
          extra={"alphas": [5e-6, 5e-4]},
          check=lambda p: {**p, "alphas": _numbers(p, "alphas", 1e-12, 1e3, 8)},
          work=lambda p: _steps_n2(p, batch=len(p["alphas"]))),
    _spec("grid", "Q x G grid: log10 test error per twin and decoder correlation per point", grid_run,
          config={"p": 0.4, "encoder": "centred"},
          extra={"q_values": [float(q) for q in np.linspace(2, 30, 8)],
                 "g_values": [float(g) for g in np.linspace(0, 0.2, 8)],
                 "networks": ["lif", "rate"], "batch": 64, "processes": 1},
          check=lambda p: {**p, "q_values": _numbers(p, "q_values", 0, 1e4, 100),
                           "g_values": _numbers(p, "g_values", 0, 1e4, 100), "networks": _networks(p),
                           "batch": _integer(p, "batch", 1, 4096), "processes": _integer(p, "processes", 1, 64)},
          units=lambda p: len(p["q_values"]) * len(p["g_values"]),
          work=lambda p: _steps_n2(p, networks=len(p["networks"]), batch=len(p["q_values"]) * len(p["g_values"]))),
    _spec("transfer", "decoders swapped between the twins, both directions", transfer_run, config=_STUDY,
          work=lambda p: _steps_n2(p, extra_test_rows=2)),
    _spec("transfer_protocols", "decoders moved between the twins by several protocols (feedback and/or readout, "
          "receiver's or donor's state, run-in), at slow and fast alpha", transfer_protocols_run, config=_STUDY,
          extra={"alphas": [5e-6, 5e-4], "protocols": list(TRANSFER_PROTOCOLS), "run_in_s": 2.0},
          check=lambda p: {**p, "alphas": _numbers(p, "alphas", 1e-12, 1e3, 8), "protocols": _protocols(p),
                           "run_in_s": _number(p, "run_in_s", 0, 1e3)},
          work=_protocols_work),
    _spec("size", "error and decoder correlation against N", size_run, config=_STUDY,
          extra={"n_values": [250, 500, 1000, 2000], "trials": 0, "jitter_mv": 1.0, "jitter_frac": 0.01},
          check=lambda p: {**p, "n_values": sorted(set(_numbers(p, "n_values", 2, 20000, 20, integer=True))),
                           "trials": 0 if p["trials"] == 0 else _integer(p, "trials", 2, 1000),
                           "jitter_mv": _number(p, "jitter_mv", 0, 100), "jitter_frac": _number(p, "jitter_frac", 0, 1)},
          units=lambda p: len(p["n_values"]), work=_size_work),
    _spec("bias_variance", "bias^2 and variance of the output over repeated test trials", bias_variance_run,
          config=_STUDY, extra={"trials": 10, "jitter_mv": 1.0, "jitter_frac": 0.01},
          check=lambda p: {**p, "trials": _integer(p, "trials", 2, 1000),
                           "jitter_mv": _number(p, "jitter_mv", 0, 100), "jitter_frac": _number(p, "jitter_frac", 0, 1)},
          work=lambda p: _steps_n2(p, extra_test_rows=2 * p["trials"])),
    _spec("pca", "PCA of filtered rates, decoders per PC, RLS gain alpha / (1 + alpha M lambda)", pca_run,
          config=_STUDY, extra={"alphas": [5e-6, 5e-4], "components": 200},
          check=lambda p: {**p, "alphas": _numbers(p, "alphas", 1e-12, 1e3, 8),
                           "components": _integer(p, "components", 1, 20000)},
          work=_pca_work),
)}


def validate(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    if name not in EXPERIMENTS:
        raise ExperimentError("experiment", f"must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name].validate(params)


def work(name: str, params: dict[str, Any]) -> float:
    """What the experiment's time scales with (network-steps x N^2), for validated `params`."""
    return EXPERIMENTS[name].work(params)


def run_experiment(name: str, params: dict[str, Any] | None, out_dir: str | Path, *,
                   on_progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    params = validate(name, params)
    spec = EXPERIMENTS[name]
    writer = ResultWriter(Path(out_dir), name, params, spec.units(params), on_progress, should_stop)
    writer.save()
    spec.execute(params, writer)
    return writer.finish()
