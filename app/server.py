"""`serve(...)`: build the app and run it under uvicorn (what `spikeboard serve` calls).

Workers run as subprocesses that die with the server (Linux parent-death signal,
plus a parent check in their heartbeat): a killed server leaves no training
behind; its runs go back to the queue and resume from their checkpoints on the
next start. A graceful stop (Ctrl-C, SIGTERM) does the same.
"""

from __future__ import annotations

import logging

import uvicorn

from app.main import create_app
from app.security import check_bind
from app.settings import Settings

log = logging.getLogger("app.server")


def serve(host: str | None = None, port: int | None = None, data_dir: str | None = None,
          workers: int | None = None, token: str | None = None, *, executor: str | None = None,
          ray_address: str | None = None, runs_per_gpu: int | None = None, public_url: str | None = None,
          analysis_slots: int | None = None, pack_runs: int | None = None, paused: bool | None = None) -> None:
    """Flags left None fall back to SPIKEBOARD_* variables, then the defaults."""
    settings = Settings.from_env(host=host, port=port, data_dir=data_dir, workers=workers, token=token,
                                 executor=executor, ray_address=ray_address, runs_per_gpu=runs_per_gpu,
                                 public_url=public_url, analysis_slots=analysis_slots, pack_runs=pack_runs,
                                 paused=paused)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_bind(settings.host, settings.token)  # a public bind needs a token (app/security.py)
    app = create_app(settings)
    log.info("data in %s, %s executor, %d worker slot(s)%s, %d more for analyses", settings.data_dir.resolve(),
             settings.executor, settings.workers, f" at Ray {settings.ray_address}" if settings.ray_address else "",
             settings.analysis_slots if settings.workers else 0)
    if settings.executor == "ray":
        log.info("Ray workers report to %s with per-run credentials", settings.worker_url)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    """`python -m app.server [FLAGS]`: `spikeboard serve [FLAGS]`, through the CLI's one parser."""
    import sys

    from app.cli import main as cli_main

    raise SystemExit(cli_main(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()
