"""wandb runs of a sweep: group, names, resolved config and logged values, read back from the offline run files.
(The same, for runs of a real SLURM sweep of the train stage: tests/test_slurm.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from adpo.config import compose
from adpo.tracking import init_wandb, run_group, run_label
from train_helpers import read_wandb_records


def read_runs(root: Path) -> dict[str, dict]:
    """The runs under root by name (runs of one name, a policy's train and eval: read_run_list)."""
    return {run["name"]: run for run in read_run_list(root)}


def read_run_list(root: Path) -> list[dict]:
    import wandb

    # finish() may return before wandb's service has written everything (seen under load); teardown waits for it.
    wandb.teardown()
    runs = []
    for path in sorted(root.rglob("run-*.wandb")):
        run: dict = {"history": []}
        kinds = []
        for record in read_wandb_records(path):
            kind = record.WhichOneof("record_type")
            kinds.append(kind)
            if kind == "run":
                r = record.run
                run.update(group=r.run_group, job_type=r.job_type, project=r.project, tags=list(r.tags),
                           run_id=r.run_id, config={i.key: json.loads(i.value_json) for i in r.config.update})
                run["name"] = r.display_name
            elif kind == "config":  # run.config.update() after init
                run.setdefault("config", {}).update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "summary":
                run.setdefault("summary", {}).update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                                      for i in record.summary.update})
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
        assert "name" in run, f"{path}: no run record among {kinds}"
        runs.append(run)
    return runs


def test_runs_of_a_sweep_share_a_group_and_are_named_by_their_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for method, granularity, seed in [("dpo", None, 0), ("adpo", "static:8", 0), ("adpo", "static:8", 1)]:
        # The sweep selects experiment=paper (model llama3_8b unless narrowed); paths.root keeps the files in tmp.
        overrides = [f"paths.root={tmp_path}", f"method={method}", f"seed={seed}", "+sweep=granularity",
                     "wandb=offline", "experiment_name=abl"]
        if granularity:
            overrides.append(f"method.granularity={granularity}")
        cfg = compose("train", overrides)
        run = init_wandb(cfg, job_type="train")
        assert run is not None
        for step in (1, 2):
            run.log({"loss": 1.0 / step + seed, "rewards/margins": step * 0.5}, step=step)
        run.finish()

    runs = read_runs(tmp_path / "wandb")
    assert set(runs) == {"dpo-sequence-llama3_8b-gsm8k-s0", "adpo-static8-llama3_8b-gsm8k-s0",
                         "adpo-static8-llama3_8b-gsm8k-s1"}
    for name, run in runs.items():
        assert run["group"] == "granularity" and run["job_type"] == "train" and run["project"] == "adpo"
        seed = int(name[-1])
        assert run["config"]["seed"] == seed
        assert run["config"]["method"]["name"] == name.split("-")[0]
        assert run["config"]["paths"]["root"] == str(tmp_path), "the resolved config is logged"
        assert [(r["_step"], r["loss"], r["rewards/margins"]) for r in run["history"]] == [
            (1, 1.0 + seed, 0.5), (2, 0.5 + seed, 1.0)]
    # No key is ever written: offline runs hold no credentials.
    assert not any("api_key" in p.read_text(errors="ignore").lower()
                   for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json"))


def test_group_defaults_to_the_experiment_and_callers_can_name_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose("train", [f"paths.root={tmp_path}", "experiment_name=quick", "method=cadpo", "seed=2"])
    assert run_group(cfg) == "quick"
    assert run_label(cfg) == "cadpo-token-tiny-gsm8k-s2"
    run = init_wandb(cfg, job_type="eval", name="custom-name", group="other")
    run.log({"accuracy": 0.25})
    run.finish()
    (run_info,) = read_runs(tmp_path / "wandb").values()
    assert run_info["name"] == "custom-name" and run_info["group"] == "other" and run_info["job_type"] == "eval"
    assert run_info["history"][0]["accuracy"] == 0.25


def test_disabled_and_non_zero_ranks_log_nothing(tmp_path):
    cfg = compose("train", [f"paths.root={tmp_path}", "wandb=disabled"])
    assert init_wandb(cfg, job_type="train") is None
    cfg = compose("train", [f"paths.root={tmp_path}", "wandb=offline"])
    assert init_wandb(cfg, job_type="train", rank=1) is None
    assert not (tmp_path / "wandb").exists() or not any((tmp_path / "wandb").iterdir())
