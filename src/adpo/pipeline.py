"""`adpo-pipeline`: the whole chain, prepare -> [sft] -> sample -> pairs -> [weights] -> train -> eval -> aggregate.

Every stage runs as its own subprocess (`python -m <its module> <overrides>`, modules from adpo.registry; training under
`torch.distributed.run` when pipeline.nproc_per_node > 1), so that vLLM engines, DeepSpeed process groups and their
memory never outlive a stage. Each stage gets the pipeline's own command-line overrides (experiment=..., paths.root=,
seed=...) plus, for the per-run stages, the run's overrides from pipeline.runs.

Resume: each stage records a manifest (adpo.manifest) in its output directory and skips itself when it matches; the
pipeline checks the same manifest first and does not even start a stage whose output is finished. A killed chain,
rerun with the same command, redoes only unfinished stages (which themselves resume from their shards and
checkpoints) and ends with the same outputs.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from adpo.config import compose, conf_dir, stage_main
from adpo.manifest import identity, is_complete, read_manifest
from adpo.progress import LogFollower
from adpo.registry import stage as registered
from adpo.registry import STAGES, stage_names
from adpo.run_dirs import PlannedJob, output_dir_of, plan_output_dirs, refuse_shared_output_dirs
from adpo.stage_results import result_line
from adpo.tracking import BASE_RUN
from adpo.validation import validate_config

log = logging.getLogger(__name__)



class StageFailed(RuntimeError):
    pass


@dataclass
class Step:
    stage: str
    overrides: list[str]
    label: str = ""  # which run ("dpo-sequence-s0", "base") for per-run stages
    config: DictConfig | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.stage} [{self.label}]" if self.label else self.stage


# ---------------------------------------------------------------------------------------------- planning

def run_overrides(run: Any) -> list[str]:
    """A run from pipeline.runs (a list of "key=value" strings or a mapping) as Hydra overrides."""
    if run is None:
        return []
    if isinstance(run, (Mapping, DictConfig)):
        items = OmegaConf.to_container(run) if isinstance(run, DictConfig) else dict(run)
        return [f"{k}={_hydra_value(v)}" for k, v in items.items()]
    if isinstance(run, str):
        return [run]
    if isinstance(run, (Sequence, ListConfig)):
        return [str(o) for o in run]
    raise ValueError(f"a pipeline run must be a list of overrides or a mapping, got {run!r}")


def expand_runs(runs: Any, sweep: Any = None) -> list[list[str]]:
    """pipeline.runs, each crossed with every combination of pipeline.sweep ({key: [values]}); the sweep is the
    outer loop, so that all runs of a first seed finish before the second seed starts."""
    base = [run_overrides(r) for r in (runs or [[]])]
    if not sweep:
        return base
    items = OmegaConf.to_container(sweep) if isinstance(sweep, DictConfig) else dict(sweep)
    grid = [[f"{k}={_hydra_value(v)}" for v in (values if isinstance(values, list) else [values])]
            for k, values in items.items()]
    return [r + list(combo) for combo in itertools.product(*grid) for r in base]


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def stage_overrides(cli_overrides: Sequence[str]) -> list[str]:
    """The pipeline's command line minus what only the pipeline reads."""
    return [o for o in cli_overrides if not _key(o).startswith(("pipeline.", "hydra.", "hydra/")) and
            _key(o) != "pipeline"]


class _Composer:
    """compose() for the plan, each (stage, overrides) once: the run planning and the steps ask for the same ones."""

    def __init__(self) -> None:
        self.configs: dict[tuple[str, tuple[str, ...]], DictConfig] = {}

    def __call__(self, stage: str, overrides: Sequence[str]) -> DictConfig:
        key = (stage, tuple(overrides))
        if key not in self.configs:
            self.configs[key] = compose(registered(stage).config, overrides)
            # Every step's settings checked here, so that a bad run fails the plan before the first stage starts.
            validate_config(self.configs[key], registered(stage).config,
                            f"the pipeline's {stage} step ({' '.join(overrides) or 'no overrides'})")
        return self.configs[key]


def plan(cfg: DictConfig, cli_overrides: Sequence[str]) -> list[Step]:
    """The chain's steps, in order, each with its overrides and its composed config.

    Runs that would share a directory get a run_tag from what differs between them (adpo.run_dirs; the same tagged
    overrides for their train and eval steps), or the plan is refused, as are two steps of one stage that would
    write one directory."""
    p = cfg.pipeline
    wanted = list(p.stages)
    unknown = [s for s in wanted if s not in stage_names()]
    if unknown:
        raise ValueError(f"pipeline.stages: unknown stage(s) {unknown}; known: {stage_names()}")
    base = stage_overrides(cli_overrides)
    composed = _Composer()
    planned_runs = plan_output_dirs("train", expand_runs(p.runs, p.get("sweep")),
                                    lambda run: composed("train", base + run),
                                    explain=lambda line: print(f"[pipeline] {line}", flush=True))
    runs = [job.overrides for job in planned_runs]
    run_cfgs = [job.config for job in planned_runs]
    labels = [str(c.run_name) for c in run_cfgs]
    steps: list[Step] = []
    owned = stage_sections()

    def add(stage: str, overrides: list[str], label: str = "") -> None:
        if stage in wanted:
            overrides = for_stage(stage, overrides, owned)
            steps.append(Step(stage, overrides, label, composed(stage, overrides)))

    add("prepare", base)
    sft = p.sft
    if sft == "auto":
        sft = cfg.data.get("source") == "toy"
    if sft:
        add("sft", base)
    if p.base_eval:
        add("eval", base + [f"run_name={BASE_RUN}", "input_dir=${model.name_or_path}"], BASE_RUN)

    # Data chains: one shared, or one per distinct value of pipeline.data_keys among the runs.
    data_keys = set(p.data_keys or [])
    chains: dict[tuple[str, ...], list[int]] = {}
    for i, r in enumerate(runs):
        chains.setdefault(tuple(o for o in r if _key(o) in data_keys), []).append(i)
    weights = p.weights
    for chain, members in chains.items():
        label = ",".join(chain)
        needs_weights = weights if weights != "auto" else any(bool(run_cfgs[i].method.use_weights) for i in members)
        add("sample", base + list(chain), label)
        add("pairs", base + list(chain), label)
        if needs_weights:
            add("weights", base + list(chain), label)
    for r, label in zip(runs, labels):
        add("train", base + r, label)
        add("eval", base + r, label)
    add("aggregate", base)
    add("analyze", base)
    trajectory = p.get("trajectory", "auto")
    if trajectory == "auto":
        trajectory = any(c.train.get("snapshot_every") or c.train.get("snapshot_at") for c in run_cfgs)
    if trajectory:
        add("trajectory", base)
    refuse_shared_step_dirs(steps)
    return steps


def refuse_shared_step_dirs(steps: Sequence[Step]) -> None:
    """Two steps of one stage writing one directory (two data chains whose paths do not differ, say) is refused."""
    for stage in dict.fromkeys(step.stage for step in steps):
        same_stage = [step for step in steps if step.stage == stage and step.config is not None]
        refuse_shared_output_dirs(stage, [PlannedJob(step.overrides, step.config, output_dir_of(step.config))
                                          for step in same_stage])


# ---------------------------------------------------------------------------------------------- running

def command(step: Step, cfg: DictConfig) -> list[str]:
    python = cfg.pipeline.python or sys.executable
    module = registered(step.stage).module
    nproc = int(cfg.pipeline.nproc_per_node)
    overrides = list(step.overrides)
    every = cfg.pipeline.get("progress_every")
    if every and not any(_key(o) == "progress_every" for o in overrides):
        overrides.append(f"progress_every={every}")  # the lines the pipeline shows; never part of a stage's hash
    if step.stage == "train" and nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                "-m", module, *overrides]
    return [python, "-m", module, *overrides]


def is_finished(step: Step) -> bool:
    """The stage's own test: a complete manifest for this config whose recorded inputs are unchanged."""
    cfg = step.config
    if cfg is None or cfg.get("output_dir") is None:
        return False
    try:
        out = Path(cfg.output_dir)
        record = read_manifest(out)
        return record is not None and is_complete(out, identity(cfg, step.stage),
                                                  list(record.get("inputs") or {}))
    except Exception as e:  # an unresolvable interpolation, say: let the stage decide
        log.debug("pipeline: cannot check %s (%s); running it", step.name, e)
        return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the pipeline dies (even by SIGKILL), so a stage never runs on orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Runner:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.logs = Path(cfg.paths.root) / "logs"
        self.child: subprocess.Popen | None = None

    def _forward(self, signum: int, _frame: Any) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)
            try:
                self.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.child.kill()
        raise SystemExit(128 + signum)

    def _wait_showing_progress(self, head: str, log_path: Path | None) -> int:
        """Wait for the stage, showing the progress lines it logs: on a terminal one status line rewritten in place,
        elsewhere (a file, a SLURM log) each line as it comes."""
        assert self.child is not None
        if log_path is None:  # stream_logs: the stage writes here itself
            return self.child.wait()
        follower, live, shown = LogFollower(log_path), sys.stdout.isatty(), False
        while True:
            try:
                code = self.child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
            lines = follower.new_lines()
            if live and lines:
                sys.stdout.write(f"\r\x1b[K{head} {lines[-1]}"[:_terminal_width()])
                sys.stdout.flush()
                shown = True
            elif lines:
                print("\n".join(f"{head} {line}" for line in lines), flush=True)
            if code is not None:
                if shown:
                    sys.stdout.write("\r\x1b[K")
                    sys.stdout.flush()
                return code

    @staticmethod
    def _result(step: Step) -> str:
        """': <the stage's key result>' from its manifest (adpo.stage_results), or ''."""
        if step.config is None or step.config.get("output_dir") is None:
            return ""
        try:
            line = result_line(step.stage, (read_manifest(step.config.output_dir) or {}).get("outputs") or {})
        except (KeyError, TypeError, ValueError):  # an older manifest without a figure: no line, not a failure
            return ""
        return f": {line}" if line else ""

    def run_step(self, index: int, total: int, step: Step) -> str:
        head = f"[pipeline] {index:>2}/{total} {step.name:<40}"
        if is_finished(step):
            print(f"{head} skipped (finished){self._result(step)}", flush=True)
            return "skipped"
        p = self.cfg.pipeline
        env = {**os.environ, **{str(k): str(v) for k, v in (p.env or {}).items()}}
        env.setdefault("PYTHONUNBUFFERED", "1")
        # A stage starts its own wandb service: one inherited from this process would outlive a killed stage and
        # keep its run id "in use" when the stage resumes that run.
        env.pop("WANDB_SERVICE", None)
        self.logs.mkdir(parents=True, exist_ok=True)
        safe = step.label.replace("/", "_").replace(",", "_").replace("=", "")
        log_path = self.logs / f"{index:02d}-{step.stage}{'-' + safe if safe else ''}.log"
        cmd = command(step, self.cfg)
        before = (read_manifest(step.config.output_dir) or {}).get("finished_at") if step.config else None
        print(f"{head} running ... (log: {log_path})", flush=True)
        start = time.time()
        with open(log_path, "w") as log_file:
            log_file.write("$ " + " ".join(cmd) + "\n")
            log_file.flush()
            sink = None if p.stream_logs else log_file
            self.child = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT if sink else None, env=env,
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            code = self._wait_showing_progress(head, log_path if sink else None)
            self.child = None
        seconds = time.time() - start
        if code != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-int(p.tail_on_failure):]
            print("\n".join(tail), file=sys.stderr, flush=True)
            raise StageFailed(f"{step.name} failed (exit {code}) after {seconds:.0f} s; command: {' '.join(cmd)}; "
                              f"log: {log_path}")
        after = (read_manifest(step.config.output_dir) or {}).get("finished_at") if step.config else None
        note = " (the stage found its work finished)" if before is not None and before == after else ""
        print(f"{head} ran in {seconds:.1f} s{note}{self._result(step)}", flush=True)
        return "ran"


def run(cfg: DictConfig, cli_overrides: Sequence[str] | None = None) -> list[tuple[str, str]]:
    if cli_overrides is None:
        cli_overrides = _hydra_overrides()
    if not cfg.pipeline.dry_run:
        from adpo.wandb_check import preflight

        if preflight(cfg):  # wandb online unusable, fallback_offline: every stage offline, none retrying
            cli_overrides = [*cli_overrides, "wandb.mode=offline"]
    steps = plan(cfg, cli_overrides)
    print(f"[pipeline] {cfg.experiment_name}: {len(steps)} stages under {cfg.paths.root}", flush=True)
    if cfg.pipeline.dry_run:
        for i, step in enumerate(steps, 1):
            print(f"[pipeline] {i:>2}/{len(steps)} {step.name:<40} " + " ".join(command(step, cfg)))
        return []
    runner = Runner(cfg)
    previous = {s: signal.signal(s, runner._forward) for s in (signal.SIGTERM, signal.SIGINT)}
    start, results = time.time(), []
    try:
        for i, step in enumerate(steps, 1):
            results.append((step.name, runner.run_step(i, len(steps), step)))
    except StageFailed as e:
        print(f"[pipeline] FAILED: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    ran = sum(r == "ran" for _, r in results)
    print(f"[pipeline] done in {time.time() - start:.0f} s: {ran} stages ran, {len(results) - ran} skipped",
          flush=True)
    tables = Path(cfg.paths.results) / "tables.md"
    if cfg.pipeline.print_tables and "aggregate" in list(cfg.pipeline.stages) and tables.is_file():
        print("\n" + tables.read_text(), flush=True)
    return results


def _terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns + len("\r\x1b[K")


def _hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not started by hydra.main (e.g. run(compose(...)) from code)
        return []


def stage_sections() -> dict[str, set[str]]:
    """The sections each stage's own primary config adds (sft, pairing, criticality, aggregate, analyze,
    trajectory), by stage: the pipeline's config has only what an experiment sets of them."""
    import yaml

    owned: dict[str, set[str]] = {}
    for s in STAGES:
        data = yaml.safe_load((conf_dir() / f"{s.config}.yaml").read_text(encoding="utf-8")) or {}
        owned[s.name] = {key for key, value in data.items() if isinstance(value, dict)}
    return owned


def _section(override: str) -> str:
    return _key(override).split(".", 1)[0]


def pass_stage_settings(args: Sequence[str]) -> list[str]:
    """`sft.hidden_size=256` -> `++sft.hidden_size=256` for the sections of stage_sections(): the pipeline's config
    takes the key as given (Hydra refuses a plain override of a key its config lacks), and plan() hands it to the
    stage that owns the section, so that any stage's setting can be given to the chain as it is to the stage."""
    sections = set().union(*stage_sections().values())
    return [f"++{a}" if "=" in a and a[:1].isalpha() and _section(a) in sections else a for a in args]


def for_stage(stage: str, overrides: Sequence[str], owned: Mapping[str, set[str]]) -> list[str]:
    """The overrides without those of another stage's own section: `aggregate.confidence=0.9` is the aggregate
    stage's alone (in another stage's config it would only change that stage's identity)."""
    foreign = set().union(*owned.values()) - owned.get(stage, set())
    return [o for o in overrides if _section(o) not in foreign]


_main = stage_main("pipeline")(run)


def main() -> None:
    sys.argv[1:] = pass_stage_settings(sys.argv[1:])
    _main()

if __name__ == "__main__":
    main()
