"""Stage 'trajectory': trained runs -> how each method moved along training (accuracy, KL from the reference, margins).

For every finished train run at or below input_dir, at each evaluated point -- step 0 (the reference model), every
snapshot the run exported (train.snapshot_every: <run>/snapshots/step-NNNNNN/) and the final model -- it measures
  - greedy accuracy on the first trajectory.problems test problems, with the eval stage's protocol (cfg.eval,
    cfg.generation: the same prompts, stop strings, grading and backend);
  - KL(pi || pi_ref) on the first trajectory.kl_prompts test prompts (never trained on), a sampled estimate
    (adpo_eval.policy_kl: kl_samples responses per prompt at temperature 1, stopped as the evaluation stops);
and joins the training log's values at that step (metrics.jsonl: the beta-scaled margin, the saturated share, the
chosen and rejected log-probs, and their eval/* values on held-out pairs). Then, over runs, per group of seeds (the
run name without its seed): curves with Student-t intervals over seeds, and each group minus the baseline group
(trajectory.baseline; auto: DPO) paired by seed at matched step and at matched KL (adpo_eval.trajectory_stats).

Outputs in output_dir: points/<digest>.json (one measured model: reused while the model's files and the settings
are unchanged, so a killed run resumes point by point, and runs sharing a reference measure it once; elsewhere with
trajectory.points_dir, so that the tables can be written to another directory without measuring again),
runs/<run>/trajectory.csv, curves.csv, groups.csv, matched_step.csv, matched_kl.csv, margins.csv (every logged
training step), runs.csv, trajectory.md, trajectory.png, a wandb run `trajectory-<experiment>`, manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from adpo.config import stage_main
from adpo.io import DataError, atomic_write_json, atomic_write_text, iter_jsonl
from adpo.manifest import config_hash, identity, is_complete, mark_running, model_identity, write_manifest
from adpo_eval.render import to_markdown
from adpo_eval.trained_runs import TrainedRun, load_trained_run, trained_runs_below
from adpo_eval.trajectory_stats import first_step_past, group_curves, kl_grid, matched_kl, matched_step

log = logging.getLogger(__name__)

# Bumped when what a point holds changes for the same model and settings: older points are measured again.
POINT_FORMAT = 1
# Training-log values joined to each point: column -> metrics.jsonl key.
LOGGED = {"margin": "rewards/margins", "saturated": "rewards/saturated", "logps_chosen": "logps/chosen",
          "logps_rejected": "logps/rejected", "segments_saturated": "segments/saturated", "loss": "loss",
          "eval_margin": "eval/rewards/margins", "eval_saturated": "eval/rewards/saturated",
          "eval_logps_chosen": "eval/logps/chosen", "eval_logps_rejected": "eval/logps/rejected",
          "eval_loss": "eval/loss"}
CURVE_METRICS = ("accuracy", "kl", *LOGGED)
# What a measured point holds, in the order of the CSV columns.
POINT_FIELDS = ("accuracy", "correct", "total", "kl", "kl_sem", "kl_samples", "kl_mean_tokens")
COMPARED = ("accuracy", "kl", "margin", "eval_margin", "saturated", "eval_saturated", "logps_chosen")


def run(cfg: DictConfig) -> dict[str, Any]:
    out, root = Path(cfg.output_dir), Path(cfg.input_dir)
    run_dirs = trained_runs_below(root, "trajectory")
    key = identity(cfg, "trajectory")
    problems, problems_file = _problems(cfg)
    inputs = [*run_dirs, *([problems_file] if problems_file else [])]
    if is_complete(out, key, inputs):
        log.info("trajectory: %s is up to date with %d runs; skipping", out, len(run_dirs))
        return {"runs": len(run_dirs)}
    mark_running(out, "trajectory", cfg, inputs, key=key)
    frames, logs, runs = [], [], []
    for i, path in enumerate(run_dirs):
        trained = load_trained_run(path)
        log.info("trajectory: run %d/%d %s", i + 1, len(run_dirs), trained.name)
        points = measure_run(trained, problems, out, cfg)
        logged = training_log(trained)
        frame = join_log(points, logged)
        run_dir = out / "runs" / trained.name
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "trajectory.csv", frame.to_csv(index=False))
        frames.append(frame)
        logs.append(logged.assign(run=trained.name, group=trained.group, seed=trained.seed))
        runs.append(trained)
    outputs = write_combined(out, pd.concat(frames, ignore_index=True), pd.concat(logs, ignore_index=True), runs, cfg)
    write_manifest(out, "trajectory", cfg, inputs, outputs=outputs, key=key)
    return outputs


def _problems(cfg: DictConfig) -> tuple[list, Path | None]:
    """The test problems (eval.split of data_dir, or of the data config) and the file they came from."""
    from adpo_eval.evaluate import load_eval_problems

    problems, path = load_eval_problems(cfg)
    t = cfg.trajectory
    wanted = max(int(t.problems), int(t.kl_prompts))
    if len(problems) < wanted:
        log.warning("trajectory: %d test problems, fewer than the %d asked for", len(problems), wanted)
    return problems[:wanted], path


# ---------------------------------------------------------------------------------------------- one run

def evaluated_points(run: TrainedRun) -> list[tuple[int, str]]:
    """(step, model) along the run: the reference at 0, each exported snapshot, the final policy."""
    from adpo.training.loop import SNAPSHOTS

    points = [(0, run.reference_model)]
    snapshots = run.path / SNAPSHOTS
    if snapshots.is_dir():
        for directory in sorted(snapshots.glob("step-*")):
            if (directory / "export.json").is_file():
                points.append((int(directory.name.split("-", 1)[1]), str(directory)))
    steps = (run.manifest.get("outputs") or {}).get("steps")
    if steps is None:
        raise DataError(f"{run.path / 'manifest.json'}: field 'outputs.steps' (the run's number of steps) is missing")
    points.append((int(steps), str(run.policy_dir)))
    return points


def _point_settings(cfg: DictConfig, run: TrainedRun, problems: list) -> dict[str, Any]:
    t = OmegaConf.to_container(cfg.trajectory, resolve=True)
    e = OmegaConf.to_container(cfg.eval, resolve=True)
    return {"format": POINT_FORMAT,
            "eval": {k: e.get(k) for k in ("prompt_style", "num_shots", "max_new_tokens", "temperature", "top_p",
                                          "seed", "stop", "split")},
            "generation": OmegaConf.to_container(cfg.generation, resolve=True),
            "trajectory": {k: t.get(k) for k in ("problems", "kl_prompts", "kl_samples", "kl_seed", "dtype")},
            "problems": hashlib.sha256("\n".join(f"{p.id}\t{p.question}\t{p.gold}" for p in problems)
                                       .encode()).hexdigest()[:16],
            "prompt_format": str(run.get("model.prompt_format", "plain")),
            "trailing_space": bool(run.get("model.prompt_trailing_space", False))}


def measure_run(run: TrainedRun, problems: list, out: Path, cfg: DictConfig) -> pd.DataFrame:
    settings = _point_settings(cfg, run, problems)
    reference_id = model_identity(run.reference_model)
    rows = []
    for step, model in evaluated_points(run):
        made_for = {"model": model_identity(model), "reference": reference_id if step else None, **settings}
        digest = config_hash(made_for)
        file = points_dir(cfg) / f"{digest}.json"
        point = _read_point(file, made_for)
        if point is None:
            log.info("trajectory: %s step %d: measuring %s", run.name, step, model)
            point = {"made_for": made_for, **measure_point(model, run.reference_model if step else None, problems,
                                                           run, cfg)}
            atomic_write_json(file, point)
        rows.append({"run": run.name, "group": run.group, "seed": run.seed, "method": run.get("method.name"),
                     "granularity": run.granularity, "step": step, "model": model,
                     **{k: point.get(k) for k in POINT_FIELDS}})
    return pd.DataFrame(rows)


def points_dir(cfg: DictConfig) -> Path:
    """Where measured points are kept (trajectory.points_dir; null: output_dir/points)."""
    return Path(str(cfg.trajectory.points_dir)) if cfg.trajectory.get("points_dir") else Path(cfg.output_dir) / "points"


def _read_point(file: Path, made_for: dict) -> dict | None:
    if not file.is_file():
        return None
    try:
        point = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return point if point.get("made_for") == json.loads(json.dumps(made_for, default=str)) else None


def measure_point(model: str, reference: str | None, problems: list, run: TrainedRun, cfg: DictConfig) -> dict:
    """Greedy accuracy and (for a trained model) the sampled KL from `reference`."""
    from adpo.data.prompts import stop_sequences
    from adpo.generation.graded import GradedGeneration
    from adpo.models import load_causal_lm, load_policy, resolve_device
    from adpo_eval.policy_kl import sampled_kl

    t, e = cfg.trajectory, cfg.eval
    prompt_format = str(run.get("model.prompt_format", "plain"))
    accuracy_problems = problems[:int(t.problems)]
    with GradedGeneration(cfg.generation, model, prompt_format, prompt_style=e.prompt_style, num_shots=e.num_shots,
                          n=1, temperature=e.temperature, top_p=e.top_p, max_tokens=e.max_new_tokens, seed=e.seed,
                          grade_workers=e.grade_workers, grade_timeout_s=e.grade_timeout_s, stop=e.stop,
                          trailing_space=bool(run.get("model.prompt_trailing_space", False))) as graded:
        results = graded(accuracy_problems, 0)
        correct = sum(bool(g.grades[0].correct) for g in results)
        point: dict[str, Any] = {"correct": correct, "total": len(results),
                                 "accuracy": correct / len(results) if results else math.nan}
        if reference is None:  # the reference itself: no distance to measure
            point.update({"kl": 0.0, "kl_sem": 0.0, "kl_samples": 0, "kl_mean_tokens": math.nan})
            return point
        kl_problems = problems[:int(t.kl_prompts)]
        datasets = sorted({p.dataset for p in kl_problems})
        stop = list(e.stop) if e.stop is not None else stop_sequences(datasets[0], prompt_format)
        device = resolve_device(t.device)
        dtype = t.get("dtype") or run.get("model.dtype", "auto")
        policy = load_policy(model, dtype=dtype, device=device, dtype_key="trajectory.dtype")
        reference_model = load_causal_lm(reference, dtype=dtype, device=device, dtype_key="trajectory.dtype")
        estimate = sampled_kl(graded.generator, [graded.prompt(p) for p in kl_problems], policy=policy,
                              reference=reference_model, samples=int(t.kl_samples),
                              max_tokens=int(e.max_new_tokens), stop=stop, seed=int(t.kl_seed),
                              batch_size=int(t.batch_size), device=device)
        point.update(estimate.as_dict())
    return point


def training_log(run: TrainedRun) -> pd.DataFrame:
    """The run's metrics.jsonl, one row per logged step (rows of one step merged), LOGGED's columns."""
    path = run.path / "metrics.jsonl"
    by_step: dict[int, dict] = {}
    if path.is_file():
        for _, row in iter_jsonl(path):
            step = int(row["step"])
            by_step.setdefault(step, {"step": step}).update({col: row[key] for col, key in LOGGED.items()
                                                             if key in row})
    return pd.DataFrame(sorted(by_step.values(), key=lambda r: r["step"]), columns=["step", *LOGGED])


def join_log(points: pd.DataFrame, logged: pd.DataFrame) -> pd.DataFrame:
    """Each point with the training log's values at its step; at step 0 the policy is the reference, so its
    margins are 0 by definition."""
    frame = points.merge(logged, on="step", how="left")
    at_start = frame["step"] == 0
    for column in ("margin", "eval_margin", "saturated", "eval_saturated", "segments_saturated"):
        frame.loc[at_start, column] = 0.0
    return frame


# ---------------------------------------------------------------------------------------------- all runs

def _baseline(runs: Sequence[TrainedRun], setting: str) -> str:
    groups = list(dict.fromkeys(r.group for r in runs))
    if setting != "auto":
        if setting not in groups:
            raise DataError(f"trajectory.baseline={setting!r}: no such group of runs; groups: {groups}")
        return setting
    dpo = list(dict.fromkeys(r.group for r in runs if r.get("method.name") == "dpo"))
    return dpo[0] if dpo else groups[0]


def write_combined(out: Path, curves: pd.DataFrame, logged: pd.DataFrame, runs: Sequence[TrainedRun],
                   cfg: DictConfig) -> dict[str, Any]:
    t = cfg.trajectory
    confidence = float(t.confidence)
    baseline = _baseline(runs, str(t.baseline))
    threshold = float(t.saturation_margin)
    atomic_write_text(out / "curves.csv", curves.to_csv(index=False))
    atomic_write_text(out / "margins.csv", logged.to_csv(index=False))
    groups = group_curves(curves, CURVE_METRICS, confidence)
    atomic_write_text(out / "groups.csv", groups.to_csv(index=False))
    by_step = matched_step(curves, baseline, COMPARED, confidence)
    atomic_write_text(out / "matched_step.csv", by_step.to_csv(index=False))
    grid = [float(v) for v in t.kl_grid] if t.get("kl_grid") else kl_grid(curves, int(t.kl_grid_points))
    by_kl = pd.concat([matched_kl(curves, baseline, metric, grid, confidence)
                       for metric in ("accuracy", "margin", "eval_margin")], ignore_index=True) if grid else \
        pd.DataFrame()
    atomic_write_text(out / "matched_kl.csv", by_kl.to_csv(index=False))
    run_rows = []
    for r in runs:
        mine, points = logged[logged["run"] == r.name], curves[curves["run"] == r.name]
        final = points.sort_values("step").iloc[-1]
        run_rows.append({"run": r.name, "group": r.group, "seed": r.seed, "method": r.get("method.name"),
                         "granularity": r.granularity, "beta": r.beta, "lr": r.get("train.lr"),
                         "steps": int(final["step"]), "points": len(points),
                         f"first_step_margin_past_{threshold:g}": first_step_past(mine, "margin", threshold),
                         "final_margin": final.get("margin"), "final_saturated": final.get("saturated"),
                         "final_accuracy": final["accuracy"], "final_kl": final["kl"],
                         "start_accuracy": points.sort_values("step").iloc[0]["accuracy"]})
    runs_frame = pd.DataFrame(run_rows)
    crossing = f"first_step_margin_past_{threshold:g}"
    runs_frame[crossing] = runs_frame[crossing].astype("Int64")  # a step, or <NA>: never
    atomic_write_text(out / "runs.csv", runs_frame.to_csv(index=False))
    written = {"curves": "curves.csv", "groups": "groups.csv", "matched_step": "matched_step.csv",
               "matched_kl": "matched_kl.csv", "margins": "margins.csv", "runs": "runs.csv"}
    if t.plot:
        from adpo_eval.trajectory_plot import plot_trajectories

        if plot_trajectories(curves, logged, out / "trajectory.png", threshold):
            written["plot"] = "trajectory.png"
    atomic_write_text(out / "trajectory.md", trajectory_markdown(groups, by_step, by_kl, runs_frame, baseline, cfg))
    written["report"] = "trajectory.md"
    _log_to_wandb(cfg, groups, by_step, by_kl, out / written["plot"] if "plot" in written else None)
    finals = groups.sort_values("step").groupby("group").tail(1)
    return {"runs_measured": len(runs), "baseline": baseline, "points": int(len(curves)),
            "final_accuracy": {str(g["group"]): _num(g["accuracy"]) for _, g in finals.iterrows()},
            "final_kl": {str(g["group"]): _num(g["kl"]) for _, g in finals.iterrows()}, **written}


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _fmt(estimate: Any, low: Any = None, high: Any = None, digits: int = 3) -> str:
    if estimate is None or pd.isna(estimate):
        return "-"
    if low is None or pd.isna(low):
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def trajectory_markdown(groups: pd.DataFrame, by_step: pd.DataFrame, by_kl: pd.DataFrame, runs: pd.DataFrame,
                        baseline: str, cfg: DictConfig) -> str:
    pct = round(100 * float(cfg.trajectory.confidence))
    t = cfg.trajectory
    lines = [f"# Along training ({cfg.get('experiment_name')})", "",
             f"{len(runs)} runs below {cfg.input_dir}; at each point: greedy accuracy on {t.problems} test problems, "
             f"KL(pi || pi_ref) sampled on {t.kl_prompts} test prompts x {t.kl_samples} responses, and the training "
             f"log at that step (margin: the mean beta-scaled sequence margin of the steps since the last log). "
             f"Means over seeds with {pct}% Student-t intervals.", "",
             "## Per group and step", ""]
    shown = pd.DataFrame([{"group": g["group"], "step": g["step"], "seeds": g["seeds"],
                           "accuracy": _fmt(g["accuracy"], g["accuracy_low"], g["accuracy_high"]),
                           "KL": _fmt(g["kl"], g["kl_low"], g["kl_high"], 2),
                           "margin": _fmt(g.get("margin"), g.get("margin_low"), g.get("margin_high"), 2),
                           "saturated": _fmt(g.get("saturated"), digits=2),
                           "held-out margin": _fmt(g.get("eval_margin"), digits=2),
                           "log p(chosen)": _fmt(g.get("logps_chosen"), digits=1),
                           "log p(rejected)": _fmt(g.get("logps_rejected"), digits=1)}
                          for _, g in groups.iterrows()])
    lines += [to_markdown(shown).rstrip(), "", f"## Minus {baseline} at matched step (paired by seed)", ""]
    if not by_step.empty:
        wide = [{"group": g, "step": s, "seeds": int(block["seeds"].max()),
                 **{m: _fmt(r["difference"], r["low"], r["high"], 3 if m in ("accuracy", "saturated") else 2)
                    for m, r in block.set_index("metric").iterrows()}}
                for (g, s), block in by_step.groupby(["group", "step"], sort=True)]
        lines += [to_markdown(pd.DataFrame(wide)).rstrip()]
    else:
        lines += ["(no group besides the baseline)"]
    lines += ["", "## At matched KL (linear between each run's points; a run counts where it reached that KL)", ""]
    if not by_kl.empty:
        acc = by_kl[by_kl["metric"] == "accuracy"]
        wide = [{"group": r["group"], "KL": f"{r['kl']:.2f}", "seeds": r["seeds"],
                 "accuracy": _fmt(r["value"], r["value_low"], r["value_high"]),
                 f"minus {baseline}": _fmt(r["difference"], r["low"], r["high"]) if r["group"] != baseline else ""}
                for _, r in acc.iterrows()]
        lines += [to_markdown(pd.DataFrame(wide)).rstrip()]
    shown_runs = runs.drop(columns=["group"]).copy()
    for column in ("final_margin", "final_saturated", "final_accuracy", "final_kl", "start_accuracy"):
        shown_runs[column] = shown_runs[column].map(lambda v: _fmt(v, digits=2 if column == "final_kl" else 3))
    crossing = next(c for c in shown_runs.columns if c.startswith("first_step_margin_past_"))
    shown_runs[crossing] = shown_runs[crossing].map(lambda v: "never" if pd.isna(v) else str(int(v)))
    lines += ["", "## Runs", "", to_markdown(shown_runs).rstrip(), "",
              "Files: curves.csv (every point of every run), groups.csv, matched_step.csv, matched_kl.csv (accuracy "
              "and margins), margins.csv (the training log at every logged step), runs/<run>/trajectory.csv."]
    return "\n".join(lines) + "\n"


def _log_to_wandb(cfg: DictConfig, groups: pd.DataFrame, by_step: pd.DataFrame, by_kl: pd.DataFrame,
                  plot: Path | None) -> None:
    from adpo.tracking import log_tables_and_images

    log_tables_and_images(cfg, "trajectory", {"groups": groups, "matched_step": by_step, "matched_kl": by_kl},
                          {"trajectory": plot} if plot is not None else {})


main = stage_main("trajectory")(run)

if __name__ == "__main__":
    main()
