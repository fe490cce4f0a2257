"""/api/runs/{id}/whatif: a trained run re-simulated at a slider position.

The same computation as the dashboard's What-if page (`jobs.whatif`,
`engine.whatif`): W_ei, W_ie and W_in multipliers, input max rate and GABA
decay time in; rates, accuracy, spectrum and, on request, the picked image's
spikes as compact event lists out. It changes nothing stored, so like the
raster it needs no token; it is bounded by the server's what-if cap instead
(503 with Retry-After when every slot stays busy for WAIT_S).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from app.api.deps import Services, get_services
from app.api.schemas import STRICT, SpectrumPublic
from engine.whatif import (
    MAX_IMAGES,
    MAX_RATE_HZ,
    MAX_SCALE,
    MAX_TAU_GABA_MS,
    WhatIfResult,
    rate_histogram,
)
from engine.stability import UNSTABLE_STEP_FACTOR
from jobs.whatif import Busy, knobs_of

router = APIRouter(prefix="/runs", tags=["what-if"])
WAIT_S = 20.0
Scale = Annotated[float, Field(ge=0.0, le=MAX_SCALE)]


class SliderPosition(BaseModel):
    """The knobs of a what-if. Omitted fields keep the trained values (multipliers 1,
    the run's own max rate and GABA decay)."""
    model_config = STRICT
    w_ei_scale: Scale = Field(1.0, description="E->I coupling multiplier")
    w_ie_scale: Scale = Field(1.0, description="I->E coupling multiplier")
    w_in_scale: Scale = Field(1.0, description="input weight multiplier")
    max_rate_hz: float | None = Field(None, ge=0.0, le=MAX_RATE_HZ, description="Poisson rate of a white pixel")
    tau_gaba_ms: float | None = Field(None, gt=0.0, le=MAX_TAU_GABA_MS, description="GABA decay time")
    sample: int = Field(0, ge=0, le=100_000, description="the picked test image (its spikes and rates, "
                                                         "the Euler check's input)")


class WhatIfRequest(SliderPosition):
    """A slider position. Omitted fields keep the trained values (multipliers 1,
    the run's own max rate and GABA decay)."""
    n_images: int = Field(16, ge=1, le=MAX_IMAGES, description="test images behind rates, spectrum, accuracy")
    raster: bool = Field(False, description="also return the picked image's spikes as event lists")


class KnobsPublic(BaseModel):
    """The slider position simulated, trained values filled in."""
    w_ei_scale: float
    w_ie_scale: float
    w_in_scale: float
    max_rate_hz: float
    tau_gaba_ms: float
    sample: int
    n_images: int


class RasterEvents(BaseModel):
    """Spikes as (step, cell) pairs per population, in step order; time = step * dt_ms."""
    e_steps: list[int]
    e_cells: list[int]
    i_steps: list[int]
    i_cells: list[int]


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class WhatIfPublic(BaseModel):
    knobs: KnobsPublic
    dt_ms: float
    t_ms: float
    n_e: int
    n_i: int
    label: int = Field(description="the picked image's label")
    predicted: int
    correct: bool
    rate_time_ms: list[float] = Field(description="1 ms bin centres of the picked image's population rates")
    population_rate_e_hz: list[float]
    population_rate_i_hz: list[float]
    raster: RasterEvents | None = Field(description="the picked image's spikes, when asked for")
    n_images: int
    rate_e_hz: float = Field(description="mean E rate over the N images")
    rate_i_hz: float
    cell_rates_e: Histogram = Field(description="per-cell E rates (Hz) over the N images")
    cell_rates_i: Histogram
    accuracy_pct: float
    accuracy_stderr_pct: float = Field(description="binomial standard error, sqrt(p (1 - p) / N)")
    accuracy_ci95_pct: tuple[float, float] = Field(description="95 % Wilson score interval (low, high): "
                                                              "not 0 wide when all or none are correct")
    spectrum: SpectrumPublic | None = Field(description="E population rate over the N images; null: trial too short")
    gamma_peak_hz: float | None = Field(description="null without a peak")
    timings_s: dict[str, float]
    weights: str = Field("final", description="'final': the finished run's weights; 'last': the latest "
                                              "checkpoint of a run still training")
    weights_epoch: int | None = Field(None, description="the epoch the simulated weights are from")

    @classmethod
    def of(cls, r: WhatIfResult, raster: bool, source: tuple[str, int | None] = ("final", None)) -> WhatIfPublic:
        events = RasterEvents(e_steps=r.raster_e.step.tolist(), e_cells=r.raster_e.cell.tolist(),
                              i_steps=r.raster_i.step.tolist(), i_cells=r.raster_i.cell.tolist()) if raster else None
        (e_edges, e_counts), (i_edges, i_counts) = rate_histogram(r.cell_rates_e_hz), rate_histogram(r.cell_rates_i_hz)
        return cls(knobs=KnobsPublic(**r.knobs.to_dict()), dt_ms=r.dt_ms, t_ms=r.t_ms, n_e=r.n_e, n_i=r.n_i,
                   label=r.label, predicted=r.predicted, correct=r.correct, rate_time_ms=r.rate_time_ms.tolist(),
                   population_rate_e_hz=r.population_rate_e_hz.tolist(),
                   population_rate_i_hz=r.population_rate_i_hz.tolist(), raster=events, n_images=r.n_images,
                   rate_e_hz=r.rate_e_hz, rate_i_hz=r.rate_i_hz,
                   cell_rates_e=Histogram(edges=e_edges, counts=e_counts),
                   cell_rates_i=Histogram(edges=i_edges, counts=i_counts),
                   accuracy_pct=r.accuracy_pct, accuracy_stderr_pct=r.accuracy_stderr_pct,
                   accuracy_ci95_pct=r.accuracy_ci95_pct,
                   spectrum=SpectrumPublic(**r.spectrum.to_dict()) if r.spectrum else None,
                   gamma_peak_hz=r.gamma_peak_hz, timings_s=r.timings_s,
                   weights=source[0], weights_epoch=source[1])


@router.post("/{run_id}/whatif", responses={
    404: {"description": "no such run"}, 409: {"description": "not a train run, or no weights yet"},
    503: {"description": "every what-if slot stayed busy; retry"}})
def what_if(run_id: str, body: WhatIfRequest, services: Annotated[Services, Depends(get_services)]) -> WhatIfPublic:
    """Re-simulate a train run's weights (final, else its last checkpoint: `weights`,
    `weights_epoch` say which) at a
    slider position: the picked test image's population rates (and spikes with
    `raster`), and over `n_images` test images the mean and per-cell rates, the
    E-rate spectrum with its gamma peak, and accuracy with its standard error."""
    knobs = knobs_of(body.model_dump(exclude={"raster"}))
    source = services.whatif.weights_source(run_id)  # before: a training run's checkpoint moves on
    try:
        result = services.whatif.compute(run_id, knobs, wait_s=WAIT_S)
    except Busy as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"}) from exc
    return WhatIfPublic.of(result, body.raster, source)


class EulerCheckRequest(SliderPosition):
    """A slider position, as for the what-if itself (the check runs on the picked image)."""


class EulerCheckPublic(BaseModel):
    """Forward Euler's step factor h = dt (g_L + g_AMPA + g_GABA) / C over the picked image's
    cells and steps. From h = 2 on, the membrane update overshoots: rates there are the
    integrator's, not the network's."""
    applies: bool = Field(description="false: the run does not integrate with forward Euler (no check)")
    step_factor_max: float | None = Field(description="largest h")
    unstable_share: float | None = Field(description="share of (cell, step) with h >= unstable_from")
    unstable: bool | None = Field(description="step_factor_max >= unstable_from")
    unstable_from: float = Field(description="the h at which forward Euler's error grows every step")


@router.post("/{run_id}/whatif/euler-check", responses={
    404: {"description": "no such run"}, 409: {"description": "not a train run, or no weights yet"},
    503: {"description": "every what-if slot stayed busy; retry"}})
def euler_check(run_id: str, body: EulerCheckRequest,
                services: Annotated[Services, Depends(get_services)]) -> EulerCheckPublic:
    """Whether forward Euler stays stable at a slider position: its step factor on the
    picked test image (the reference loop: about a second per 200 ms trial, so apart
    from the what-if). The coupling sweep's cells carry the same check."""
    knobs = knobs_of(body.model_dump())
    try:
        check = services.whatif.euler_check(run_id, knobs, wait_s=WAIT_S)
    except Busy as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"}) from exc
    if check is None:
        return EulerCheckPublic(applies=False, step_factor_max=None, unstable_share=None, unstable=None,
                                unstable_from=UNSTABLE_STEP_FACTOR)
    return EulerCheckPublic(applies=True, step_factor_max=check.step_factor_max,
                            unstable_share=check.unstable_share, unstable=check.unstable,
                            unstable_from=UNSTABLE_STEP_FACTOR)
