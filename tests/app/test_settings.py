import logging
from pathlib import Path

import pytest

from app import server
from app.settings import Settings


def test_env_then_overrides():
    env = {"SPIKEBOARD_WORKERS": "3", "SPIKEBOARD_DATA_DIR": "/tmp/x", "SPIKEBOARD_TOKEN": "abcdefgh1"}
    settings = Settings.from_env(env, workers=None, port=9000)
    assert (settings.workers, settings.data_dir, settings.port, settings.token) == (3, Path("/tmp/x"), 9000, "abcdefgh1")
    assert Settings.from_env({}).data_dir == Path("spikeboard-data")
    assert Settings.from_env({}).dashboard and not Settings.from_env({"SPIKEBOARD_DASHBOARD": "0"}).dashboard


@pytest.mark.parametrize("changes", [{"workers": -1}, {"token": "short"}, {"port": 70000}, {"threads_per_run": 0}])
def test_unsafe_values_are_refused(changes):
    with pytest.raises(ValueError):
        Settings(**changes)


def test_serve_warns_without_token_off_loopback(monkeypatch, tmp_path, caplog):
    started = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, host, port, **kw: started.append((host, port)))
    with caplog.at_level(logging.WARNING, logger="app.server"):
        server.serve("0.0.0.0", 8123, str(tmp_path / "data"), 0, None)
    assert started == [("0.0.0.0", 8123)]
    assert "without a token" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.server"):
        server.serve("127.0.0.1", 8124, str(tmp_path / "data"), 0, None)
    assert "without a token" not in caplog.text
