"""benchmarks/harness.py: the child-process runner, repetition order, spreads, --quick and the memory probe."""

from __future__ import annotations

import argparse
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture
def harness(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import harness

    return harness


def test_run_child_returns_what_the_child_wrote_in_a_clean_environment(harness, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    script = tmp_path / "child.py"
    script.write_text("import json, os, sys\n"
                      "json.dump({'args': sys.argv[1:-2], 'threads': os.environ['OMP_NUM_THREADS'],\n"
                      "           'rank': os.environ.get('RANK'), 'extra': os.environ['EXTRA']},\n"
                      "          open(sys.argv[-1], 'w'))\n")
    out = harness.run_child(script, ["--side", "a"], threads=3, env={"EXTRA": "x"})
    assert out["args"] == ["--side", "a"] and out["threads"] == "3" and out["extra"] == "x"
    assert out["rank"] is None, "a child must not think it is a rank of the parent's launcher"
    assert out["child_seconds"] > 0


def test_run_child_fails_loudly(harness, tmp_path):
    script = tmp_path / "child.py"
    script.write_text("raise SystemExit(7)\n")
    with pytest.raises(RuntimeError, match="exit 7"):
        harness.run_child(script, [], threads=1)


def test_rotation_puts_every_side_first_once(harness):
    sides = ["a", "b", "c"]
    assert [harness.rotated(sides, rep) for rep in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_spread_and_its_format(harness):
    s = harness.spread([3.0, 1.0, 2.0, 10.0])
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert harness.fmt(s, 1) == "2.5 [1.0-10.0]"


def test_step_clock_times_from_the_end_of_the_warmup(harness, monkeypatch):
    stamps = iter([1.0, 3.0, 6.0, 10.0])
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(stamps))
    clock = harness.StepClock(warmup=2)
    for _ in range(4):
        clock.step_end()
    assert clock.step_seconds() == [3.0, 4.0]


def test_quick_sets_defaults_that_explicit_options_override(harness):
    def parse(*argv):
        parser = argparse.ArgumentParser()
        parser.add_argument("--reps", type=int, default=12)
        parser.add_argument("--steps", type=int, default=5)
        return harness.parse_args(parser, {"reps": 1, "steps": 2}, list(argv))

    assert (parse().reps, parse().steps) == (12, 5)
    quick = parse("--quick", "--steps", "3")
    assert (quick.reps, quick.steps) == (1, 3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_memory_probe_sees_a_peak_inside_the_span(harness):
    probe = harness.MemoryProbe()
    probe.start()
    block = bytearray(64 << 20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    del block
    report = probe.report()
    if report["peak_rss_span_mib"] is None:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert report["peak_span_above_baseline_mib"] > 60
    assert report["peak_rss_lifetime_mib"] >= report["peak_rss_span_mib"] - 1
