"""`serve(...)`: build the app and run it under uvicorn (what `spikeboard serve` calls).

Workers run as subprocesses that die with the server (Linux parent-death signal,
plus a parent check in their heartbeat): a killed server leaves no training
behind; its runs go back to the queue and resume from their checkpoints on the
next start. A graceful stop (Ctrl-C, SIGTERM) does the same.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.main import create_app
from app.security import check_bind
from app.settings import Settings

log = logging.getLogger("app.server")


def serve(host: str, port: int, data_dir: str, workers: int, token: str | None, *,
          executor: str | None = None, ray_address: str | None = None, runs_per_gpu: int | None = None) -> None:
    """Flags left None fall back to SPIKEBOARD_* variables, then the defaults."""
    settings = Settings.from_env(host=host, port=port, data_dir=data_dir, workers=workers, token=token,
                                 executor=executor, ray_address=ray_address, runs_per_gpu=runs_per_gpu)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_bind(settings.host, settings.token)  # a public bind needs a token (app/security.py)
    app = create_app(settings)
    log.info("data in %s, %s executor, %d worker slot(s)%s", settings.data_dir.resolve(), settings.executor,
             settings.workers, f" at Ray {settings.ray_address}" if settings.ray_address else "")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    """`python -m app.server`: the same as `spikeboard serve` (used by tests)."""
    parser = argparse.ArgumentParser(prog="python -m app.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--token", default=None)
    parser.add_argument("--executor", default=None)
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--runs-per-gpu", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.data_dir, args.workers, args.token, executor=args.executor,
          ray_address=args.ray_address, runs_per_gpu=args.runs_per_gpu)


if __name__ == "__main__":
    main()
