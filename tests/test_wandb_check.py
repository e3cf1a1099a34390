"""wandb online checked before any work (adpo.wandb_check): no key or an unreachable server stops a stage and the
pipeline within seconds naming what is missing; wandb.fallback_offline=true runs offline instead and says so. No
real network: the "server" is a closed or a local port."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from adpo.config import compose
from adpo.stage_guard import guarded
from adpo.wandb_check import WandbUnavailable, preflight


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def unreachable_server(monkeypatch) -> str:
    url = closed_port_url()
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)  # a key of the right shape, never sent anywhere
    monkeypatch.setenv("WANDB_BASE_URL", url)
    return url


def stage(tmp_path: Path, *overrides: str):
    return compose("prepare", ["experiment=tiny_chain", f"paths.root={tmp_path}", "wandb=online", *overrides])


def must_not_run(cfg):
    raise AssertionError("the stage ran although wandb online cannot work")


def test_online_without_a_key_is_refused_before_the_stage_runs_naming_the_key(tmp_path, no_credentials):
    with pytest.raises(WandbUnavailable, match=r"no wandb API key .*WANDB_API_KEY is not set.*`wandb login`"):
        guarded(must_not_run, "prepare")(stage(tmp_path))
    assert not (tmp_path / "data").exists()


def test_online_with_an_unreachable_server_is_refused_within_seconds_naming_the_url(tmp_path, unreachable_server):
    start = time.time()
    with pytest.raises(WandbUnavailable, match=rf"wandb server {unreachable_server} cannot be reached.*wandb=offline"):
        guarded(must_not_run, "prepare")(stage(tmp_path))
    assert time.time() - start < 10


def test_a_server_that_answers_passes_even_with_an_error_status(tmp_path, monkeypatch):
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        cfg = stage(tmp_path)
        assert preflight(cfg) is False and cfg.wandb.mode == "online"
    finally:
        server.shutdown()
        server.server_close()


def test_offline_disabled_and_other_ranks_are_not_checked(tmp_path, no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())
    for group in ("offline", "disabled"):
        assert preflight(compose("prepare", [f"paths.root={tmp_path}", f"wandb={group}"])) is False
    monkeypatch.setenv("RANK", "1")  # only rank 0 logs to wandb
    assert preflight(stage(tmp_path)) is False


def test_fallback_offline_runs_the_pipeline_offline_and_says_so(tmp_path, unreachable_server, caplog):
    from adpo.pipeline import run

    overrides = ["experiment=tiny_chain", f"paths.root={tmp_path}", "wandb=online", "wandb.fallback_offline=true",
                 "pipeline.stages=[prepare]", "progress=false"]
    with caplog.at_level(logging.WARNING, logger="adpo.wandb_check"):
        results = run(compose("pipeline", overrides), overrides)
    assert results == [("prepare", "ran")]
    assert "SWITCHED TO OFFLINE" in caplog.text and unreachable_server in caplog.text
    # The stage got wandb.mode=offline on its command line (no check, no retry of its own) and logged offline.
    log = (tmp_path / "logs" / "01-prepare.log").read_text()
    assert log.splitlines()[0].endswith("wandb.mode=offline progress_every=15") and "SWITCHED" not in log
    assert list((tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
