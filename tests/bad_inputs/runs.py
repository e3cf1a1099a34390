"""One run per output directory, wandb online checked before any work (issue 15: runs)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.bad_inputs import BadInput


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    """os.environ with these set (None: unset), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stage_cfg(tmp: Path, *overrides: str):
    from adpo.config import compose

    return compose("prepare", ["experiment=tiny_chain", f"paths.root={tmp / 'root'}", *overrides])


def _must_not_run(cfg) -> None:
    raise AssertionError("the stage ran")


def second_run_on_a_held_directory(tmp: Path) -> None:
    from adpo.run_lock import OutputInUse
    from adpo.stage_guard import guarded

    cfg = _stage_cfg(tmp, "wandb=disabled")
    code = ("import sys, time; from omegaconf import OmegaConf; from adpo.run_lock import output_lock\n"
            "with output_lock(OmegaConf.create({'output_dir': sys.argv[1]}), 'prepare'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(cfg.output_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        try:
            guarded(_must_not_run, "prepare")(cfg)
        except OutputInUse as e:
            assert f"pid {holder.pid} on host {socket.gethostname()}" in str(e), str(e)
            raise
    finally:
        holder.kill()
        holder.wait()


def online_without_a_key(tmp: Path) -> None:
    from adpo.stage_guard import guarded

    with _env(WANDB_API_KEY=None, WANDB_IDENTITY_TOKEN_FILE=None, NETRC=str(tmp / "no-netrc"), HOME=str(tmp)):
        guarded(_must_not_run, "prepare")(_stage_cfg(tmp, "wandb=online"))


def online_with_an_unreachable_server(tmp: Path) -> None:
    from adpo.stage_guard import guarded

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _env(WANDB_API_KEY="f" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}"):
        guarded(_must_not_run, "prepare")(_stage_cfg(tmp, "wandb=online"))


CASES = [
    BadInput("output-dir-held-by-another-run", second_run_on_a_held_directory,
             r"data is in use by another run: pid \d+ on host [\s\S]*lock file: \S*/\.data\.lock",
             rule="a second run on a directory a live run holds is refused at once, naming the holder's pid, host, "
                  "command and start time and the lock file"),
    BadInput("wandb-online-without-key", online_without_a_key, r"no wandb API key .*WANDB_API_KEY is not set",
             rule="wandb online without an API key stops before the stage runs, naming WANDB_API_KEY and the fixes "
                  "(`wandb login`, wandb=offline, wandb.fallback_offline=true)"),
    BadInput("wandb-online-unreachable", online_with_an_unreachable_server,
             r"wandb server http://127\.0\.0\.1:\d+ cannot be reached",
             rule="wandb online with the server unreachable stops within seconds, naming the URL, before any work"),
]
