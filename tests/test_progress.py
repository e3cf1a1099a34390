"""Progress lines (adpo.progress): what a SLURM log shows of a long stage, and what adpo-pipeline follows."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from adpo.progress import Progress, format_duration, last_progress, parse_progress_line, progress_every


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(caplog, total=100, every=10.0, **kwargs):
    clock = FakeClock()
    logger = logging.getLogger("test.progress")
    caplog.set_level(logging.INFO, logger="test.progress")
    return Progress(total, "train dpo sequence", "step", bar=False, every_s=every, logger=logger, clock=clock,
                    **kwargs), clock


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_a_line_every_interval_with_rate_eta_and_figures(caplog):
    bar, clock = make(caplog)
    for _ in range(4):  # 4 steps in 8 s: no line yet
        clock.now += 2.0
        bar.update(1)
    assert lines(caplog) == []
    clock.now += 2.0
    bar.update(1, loss=0.6931, acc=0.5)
    [line] = lines(caplog)
    assert line.startswith("progress: train dpo sequence | step 5/100 5% | 0.5 step/s | elapsed 0:00:10")
    assert "ETA 0:03:10" in line  # 95 steps left at 0.5 step/s
    assert line.endswith("loss 0.6931 acc 0.5")
    for _ in range(4):
        clock.now += 2.0
        bar.update(1)
    assert len(lines(caplog)) == 1  # the next one only 10 s after the last
    clock.now += 2.0
    bar.update(1)
    assert len(lines(caplog)) == 2 and "step 10/100 10%" in lines(caplog)[1]
    bar.close()
    bar.close()
    assert len(lines(caplog)) == 3  # the closing line, once


def test_resumed_run_counts_only_this_process_for_the_rate(caplog):
    bar, clock = make(caplog, total=10, every=1.0, initial=6)
    clock.now += 4.0
    bar.update(2)
    [line] = lines(caplog)
    assert "step 8/10 80%" in line and "| 0.5 step/s |" in line and "ETA 0:00:04" in line


def test_disabled_rank_and_no_interval_stay_silent(caplog):
    for kwargs in ({"enabled": False}, {"every": None}):
        bar, clock = make(caplog, **kwargs)
        clock.now += 100
        bar.update(50)
        bar.close()
    assert lines(caplog) == []


def test_lines_are_found_in_a_hydra_log():
    log = ("[2026-11-30 22:41:03,112][adpo.training.loop][INFO] - 16 pairs, 1 ranks\n"
           "[2026-11-30 22:41:09,511][adpo.progress][INFO] - progress: train dpo sequence | step 3/16 19% | "
           "0.6 step/s | elapsed 0:00:05 | ETA 0:00:22 | loss 0.69\n"
           "train dpo sequence:  25%|##5       | 4/16 [00:06<00:20]\n")
    assert last_progress(log) == "train dpo sequence | step 3/16 19% | 0.6 step/s | elapsed 0:00:05 | ETA 0:00:22 | loss 0.69"
    assert parse_progress_line("no progress here") is None


def test_durations_and_the_option():
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(2 * 86400 + 3 * 3600 + 5) == "2d 3:00:05"
    assert format_duration(float("nan")) == "?"
    assert progress_every({"progress_every": 30}) == 30.0
    assert progress_every({"progress_every": None}) is None
    assert progress_every({"progress_every": 0}) is None
    with pytest.raises(ValueError, match="progress_every"):
        progress_every({"progress_every": -1})


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_pipeline_shows_a_running_stages_lines(tmp_path, monkeypatch, terminal):
    """The pipeline's wait on a stage, on a real child that logs progress lines (one cut in two writes) and tqdm-style
    redraws: a terminal gets one status line rewritten in place and cleared at the end; a file gets every line."""
    from adpo.pipeline import Runner

    log_path = tmp_path / "stage.log"
    script = ("import sys, time\n"
              "f = open(sys.argv[1], 'a')\n"
              "for k in (1, 2, 3):\n"
              "    f.write(f'[t][adpo.progress][INFO] - progress: stage | step {k}/3\\n'); f.flush(); time.sleep(0.6)\n"
              "f.write('bar  50%|#####\\r[t][adpo.progress][INFO] - progr'); f.flush(); time.sleep(1.2)\n"
              "f.write('ess: stage | done\\n'); f.close()\n")
    runner = Runner(OmegaConf.create({"paths": {"root": str(tmp_path)}}))
    out = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    runner.child = subprocess.Popen([sys.executable, "-c", script, str(log_path)])
    assert runner._wait_showing_progress("[pipeline] 1/1 stage", log_path) == 0
    shown = out.getvalue()
    if terminal:
        assert "\n" not in shown and shown.endswith("\r\x1b[K")
        assert "\r\x1b[K[pipeline] 1/1 stage stage | done" in shown
        assert "step 1/3" in shown or "step 2/3" in shown or "step 3/3" in shown
    else:
        assert shown.splitlines() == [f"[pipeline] 1/1 stage stage | step {k}/3" for k in (1, 2, 3)] + [
            "[pipeline] 1/1 stage stage | done"]
