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


def test_serve_refuses_a_public_bind_without_token_unless_explicit(monkeypatch, tmp_path, capsys):
    from app.security import BindRefused

    started = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, host, port, **kw: started.append((host, port)))
    monkeypatch.delenv("SPIKEBOARD_ALLOW_PUBLIC_WITHOUT_TOKEN", raising=False)
    with pytest.raises(BindRefused, match="without a token"):
        server.serve("0.0.0.0", 8123, str(tmp_path / "data"), 0, None)
    assert started == []
    server.serve("127.0.0.2", 8124, str(tmp_path / "data"), 0, None)  # all of 127/8 is loopback
    monkeypatch.setenv("SPIKEBOARD_ALLOW_PUBLIC_WITHOUT_TOKEN", "1")
    server.serve("0.0.0.0", 8123, str(tmp_path / "data"), 0, None)
    assert started == [("127.0.0.2", 8124), ("0.0.0.0", 8123)]
    assert "without a token" in capsys.readouterr().err
