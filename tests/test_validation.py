"""Settings checked at composition (adpo.validation): every config the project ships passes (a schema too strict fails
here), the schema's choices are the code's, and a bad setting stops a stage, a pipeline (its dry run too) and a
sweep's dry run before any work, with a message naming the key. The bad settings themselves are catalogued in
tests/bad_inputs/settings.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adpo.config import compose
from adpo.registry import STAGES
from adpo.validation import ConfigError, parses_as_granularity, problems_of

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
BIN = Path(sys.executable).parent
STAGE_CONFIGS = [s.config for s in STAGES] + ["pipeline"]
# Sections only their own stage's config has (an experiment may set them for every stage).
SECTION_STAGES = {"sft": "sft", "criticality": "weights", "pairing": "pairs", "aggregate": "aggregate",
                  "analyze": "analyze", "trajectory": "trajectory"}


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}


def _experiment_runs() -> list[tuple[str, tuple[str, ...]]]:
    """Each distinct run of the experiments' pipeline.runs, with the first experiment that has it (the plan composes
    every run's train config; tests/test_pipeline.py and tests/test_paper_setup.py plan them all)."""
    runs: dict[tuple[str, ...], str] = {}
    for name in _names("experiment"):
        for run in (_yaml("experiment", name).get("pipeline") or {}).get("runs") or []:
            runs.setdefault(tuple(run), name)
    return [(experiment, run) for run, experiment in runs.items()]


def _first_sweep_values(name: str) -> list[str]:
    params = _yaml("experiment", name).get("pipeline", {}).get("sweep") or {}
    return [f"{key}={values[0] if isinstance(values, list) else values}" for key, values in params.items()]


def _group_options() -> list[list[str]]:
    """Every option of every group, in as many compositions as the largest group has options (zipped, cycling)."""
    groups = {g: _names(g) for g in ("model", "data", "method", "train", "eval", "generation", "sampling",
                                      "deepspeed", "wandb")}
    width = max(map(len, groups.values()))
    return [[f"{g}={options[i % len(options)]}" for g, options in groups.items()] for i in range(width)]


def _sweeps() -> list[tuple[str, list[str]]]:
    """Each conf/sweep with the first value of each of its parameters, composed for the stage it is for."""
    out = []
    for name in _names("sweep"):
        params = _yaml("sweep", name)["hydra"]["sweeper"]["params"]
        stage = "weights" if name == "paper_data" else "train"
        out.append((stage, [f"+sweep={name}", *(f"{k}={str(v).split(',')[0]}" for k, v in params.items())]))
    return out


SHIPPED = (
    [pytest.param(stage, [], id=f"{stage}-defaults") for stage in STAGE_CONFIGS]
    + [pytest.param("pipeline", [f"experiment={e}", *_first_sweep_values(e)], id=f"experiment-{e}")
       for e in _names("experiment")]
    + [pytest.param("train", [f"experiment={e}", *run], id=f"run-{e}-{'-'.join(run)}") for e, run in _experiment_runs()]
    + [pytest.param("pipeline", options, id=f"groups-{i}") for i, options in enumerate(_group_options())]
    + [pytest.param(stage, overrides, id=f"sweep-{overrides[0][7:]}") for stage, overrides in _sweeps()]
    + [pytest.param("sample", ["experiment=paper", "+rehearsal=tiny", "data=math500"], id="rehearsal-tiny")]
)


@pytest.mark.parametrize("stage, overrides", SHIPPED)
def test_every_shipped_config_passes(stage, overrides, monkeypatch, tmp_path):
    monkeypatch.setenv("ADPO_TINY_MODELS", str(tmp_path))  # what the rehearsal's model paths read
    cfg = compose(stage, overrides)
    problems = {stage: problems_of(cfg, stage)}
    # An experiment's own settings of a stage's section (sft:, criticality:, ...) are checked in that stage's config.
    if overrides and overrides[0].startswith("experiment=") and stage == "pipeline":
        for section, section_stage in SECTION_STAGES.items():
            if section in cfg:
                problems[section_stage] = problems_of(compose(section_stage, overrides), section_stage)
    assert not any(problems.values()), f"{stage} {' '.join(overrides)}: {problems}"


def test_the_schemas_choices_are_the_codes():
    """validation.py repeats choices from modules that import torch; they must stay the code's."""
    import adpo.validation as v
    from adpo.data.tokenize import LENGTH_POLICIES
    from adpo.export import EXPORTS
    from adpo.generation import BACKENDS
    from adpo.losses import LENGTH_MODES, REDUCTIONS, SEGMENT_LOSSES
    from adpo.models import _DTYPES
    from adpo.segments import parse_granularity
    from adpo.training.engine import LR_SCHEDULES
    from adpo_data_prep.prepare import SPLITS
    from adpo_data_prep.sample import PROMPT_IN_ROWS
    from adpo_eval.first_error import LOCATORS

    assert set(v.SEGMENT_LOSSES) == set(SEGMENT_LOSSES)
    assert (v.LENGTH_MODES, v.REDUCTIONS, v.LR_SCHEDULES, v.LENGTH_POLICIES, v.EXPORTS, v.BACKENDS) == (
        LENGTH_MODES, REDUCTIONS, LR_SCHEDULES, LENGTH_POLICIES, EXPORTS, BACKENDS)
    assert set(v.DTYPES) == {"auto", *_DTYPES} and set(v.PROMPT_IN_ROWS) == set(PROMPT_IN_ROWS)
    assert set(v.SPLITS) == set(SPLITS)
    assert v.FIRST_ERROR_LOCATORS == LOCATORS
    for spec in ["sequence", "token", "Token ", "static:1", "static:16", "adaptive:4", "static:0", "adaptive:-1",
                 "static", "static:", "static:x", "window:4", "banana", "", "adaptive:04"]:
        try:
            parse_granularity(spec)
            accepted = True
        except ValueError:
            accepted = False
        assert parses_as_granularity(spec) == accepted, spec


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_stage_prints_the_settings_message_alone_and_fails(tmp_path):
    proc = _run([str(BIN / "adpo-train"), "method.beta=-1", "train.lr=abc", f"paths.root={tmp_path}/root"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "2 invalid settings in the train config:\n" in proc.stderr
    assert "  method.beta: got -1; allowed: a number > 0\n" in proc.stderr
    assert "  train.lr: got 'abc' (a string); allowed: a number > 0\n" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "root" / "train").exists()


def test_a_sweep_dry_run_refuses_before_submitting(tmp_path):
    proc = _run([str(BIN / "adpo-sweep"), "train", "method.beta=-1", "method.granularity=token,static:0",
                 f"paths.root={tmp_path}", "--dry-run"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "2 invalid settings in train's sweep of 2 jobs (nothing launched):" in proc.stderr, proc.stderr
    assert "  method.beta: got -1; allowed: a number > 0\n" in proc.stderr  # every job: no job list
    assert "  method.granularity: got 'static:0'; allowed: sequence, token" in proc.stderr
    assert "[job 1]" in proc.stderr and "Traceback" not in proc.stderr
    assert "DRY RUN" not in proc.stdout and not list(tmp_path.rglob("job_*.yaml"))


PIPELINE = ["experiment=tiny_chain", "wandb=disabled",
            'pipeline.runs=[["method=dpo"],["method=adpo","method.granularity=banana"]]']


def test_a_pipeline_dry_run_fails_on_a_bad_run(tmp_path):
    proc = _run([str(BIN / "adpo-pipeline"), *PIPELINE, f"paths.root={tmp_path}", "pipeline.dry_run=true"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "1 invalid setting in the pipeline's train step (" in proc.stderr
    assert "  method.granularity: got 'banana'" in proc.stderr and "Traceback" not in proc.stderr
    assert "[pipeline]" not in proc.stdout  # no plan printed


def test_a_pipeline_fails_before_its_first_stage(tmp_path):
    from adpo.pipeline import run

    overrides = [*PIPELINE, f"paths.root={tmp_path}"]
    with pytest.raises(ConfigError, match=r"method\.granularity: got 'banana'"):
        run(compose("pipeline", overrides), overrides)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "data").exists()
