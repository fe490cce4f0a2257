"""`create_app(settings)`: the FastAPI app. Nothing is built at import time."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.deps import Services
from app.api_docs import install_docs
from app.api.errors import install_error_handlers
from app.api.router import api_router
from app.security import DashboardProbe, GuardOptions, GuardState, RequestGuard
from app.settings import Settings
from jobs.executors import make_executor
from jobs.limits import RunLimits
from jobs.paths import DataDir
from jobs.scheduler import Scheduler
from jobs.service import JobService
from jobs.store import RunStore
from jobs.whatif import WhatIfService


def build_services(settings: Settings) -> Services:
    data = DataDir.at(settings.data_dir)
    store = RunStore(data.db_path)
    if settings.paused:  # before the scheduler's first tick: a copy of a data dir is inspected, not run
        store.pause_queue()
    executor = make_executor(settings.executor, data_dir=data.root, slots=settings.workers,
                             threads_per_run=settings.threads_per_run, grace_s=settings.cancel_grace_s,
                             use_gpus=settings.use_gpus, runs_per_gpu=settings.runs_per_gpu,
                             ray_address=settings.ray_address,
                             # Ray workers may run on other machines: they report over the API
                             server_url=settings.worker_url if settings.executor == "ray" else None,
                             issue_credential=store.issue_credential)
    # analyses get their own slots, local to the server's machine and not pinned to a
    # GPU: a researcher's inference of minutes must not wait for hours of training
    reserved = make_executor("local", data_dir=data.root, slots=settings.analysis_slots,
                             threads_per_run=settings.threads_per_run, grace_s=settings.cancel_grace_s,
                             use_gpus=False) if settings.analysis_slots and settings.workers else None
    scheduler = Scheduler(store, executor, stale_after_s=settings.stale_after_s,
                          grace_s=settings.cancel_grace_s, reserved=reserved, pack_runs=settings.pack_runs)
    jobs = JobService(store, data, cancel_worker=scheduler.cancel, limits=RunLimits.for_machine())
    whatif = WhatIfService(jobs, workers=settings.workers, threads_per_run=settings.threads_per_run)
    return Services(settings=settings, store=store, jobs=jobs, scheduler=scheduler, whatif=whatif)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.scheduler.start()  # requeues runs a dead server left running
        try:
            yield
        finally:
            await services.scheduler.stop()  # workers requeue their runs
            services.store.close()

    app = FastAPI(title="spikeboard", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Queue, follow and inspect spiking E/I network runs and sweeps.")
    install_docs(app)  # /docs from local files, not a CDN
    app.state.services = services
    app.state.guard = GuardState()
    app.state.dashboard_probe = DashboardProbe()
    install_error_handlers(app)
    app.include_router(api_router, prefix="/api")
    if settings.dashboard:
        from app.dashboard import mount_dashboard  # Panel and HoloViews load only when served

        mount_dashboard(app, services)  # after the API, whose routes it must not shadow
    # outermost: Host, cross-site, content-type and session checks come before anything else
    app.add_middleware(RequestGuard, bind_host=settings.host, options=GuardOptions.from_env(),
                       state=app.state.guard, dashboard=app.state.dashboard_probe, token=settings.token)
    return app
