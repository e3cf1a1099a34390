"""Stage 'analyze': trained runs -> where in the answers their preference acts (per-position implicit rewards).

For every finished train run at or below input_dir (one run directory, or a directory of runs: a sweep's train/),
on the pairs it trained on (tokenized as training did), the per-token implicit rewards r_t = beta * (log pi(y_t) -
log pi_ref(y_t)) of chosen and rejected responses, their sums over the run's own segments (its granularity), and two
anchors: the first divergence of chosen and rejected, and the first error of each answer (adpo_eval.first_error:
exact for the toy task, the first false arithmetic statement otherwise). The statistics (adpo_eval.process_stats) say
how much of a rejected answer's negative reward sits at or after its first error, against a uniform spread, per run
(bootstrap over pairs) and per group of runs that differ only in their seed (Student-t over seeds).

Outputs in output_dir: runs/<run>/pairs.jsonl (per pair: tokens, rewards, segment sums, anchors; computed once per
run and reused while the run and the settings it depends on are unchanged), runs/<run>/pair_statistics.csv,
runs/<run>/aligned.csv and runs/<run>/summary.json (recomputed from pairs.jsonl when only the statistics' settings
change), and for all runs: runs.csv, groups.csv, process.md (the tables and a reading guide), aligned.png
(mean reward around the first error and the first divergence, one line per group), share.png (the share statistic
with its intervals), manifest.json.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from adpo.config import stage_main
from adpo.io import DataError, atomic_write_json, atomic_write_jsonl, atomic_write_text, file_sha256, iter_jsonl
from adpo.manifest import identity, is_complete, mark_running, write_manifest
from adpo.progress import Progress, progress_every
from adpo.registry import stage as registered
from adpo_eval.first_error import FirstError, first_error
from adpo_eval.process_stats import (STATISTICS, PairRewards, aligned_mean, first_divergence, pair_statistics,
                                     summarize_pairs, summarize_runs)
from adpo_eval.render import to_markdown
from adpo_eval.stats import Interval
from adpo_eval.token_spans import response_text, token_at_char
from adpo_eval.trained_runs import TrainedRun, load_trained_run, trained_runs_below

log = logging.getLogger(__name__)

# Bumped when what a run's rewards (pairs.jsonl) or its statistics hold changes for the same run and settings: older
# files are recomputed (the statistics alone from the stored rewards). The statistics' format is the stage's version
# in adpo.registry, part of its identity, so that the pipeline reruns the stage too; bump it with REWARDS_FORMAT.
REWARDS_FORMAT = 1
STATISTICS_FORMAT = registered("analyze").version
# The statistics shown in process.md's table, in this order (all of STATISTICS are in the CSV files).
SHOWN = ("excess_share_after_error", "excess_share_after_error_from_divergence", "neg_share_after_error",
         "token_share_after_error", "reward_drop_at_error", "reward_at_error", "margin")


def run(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    root = Path(cfg.input_dir)
    run_dirs = trained_runs_below(root, "analyze")
    key = identity(cfg, "analyze")
    if is_complete(out, key, run_dirs):
        log.info("analyze: %s is up to date with %d runs; skipping", out, len(run_dirs))
        return {"runs": len(run_dirs)}
    mark_running(out, "analyze", cfg, run_dirs, key=key)
    summaries = []
    for i, path in enumerate(run_dirs):
        log.info("analyze: run %d/%d %s", i + 1, len(run_dirs), path)
        trained = load_trained_run(path)
        summaries.append(analyse_run(trained, out / "runs" / _run_key(path, root), cfg))
    outputs = write_combined(out, summaries, cfg)
    write_manifest(out, "analyze", cfg, run_dirs, outputs=outputs, key=key)
    return outputs


def _run_key(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix() if path != root and path.is_relative_to(root) else path.name
    return rel.replace("/", "__")


# ---------------------------------------------------------------------------------------------- one run

def _locator(run: TrainedRun, acfg: DictConfig) -> str:
    setting = str(acfg.first_error)
    if setting != "auto":
        return setting
    return "toy" if run.data_source == "toy" else "arithmetic"


def _read_summary(path: Path) -> dict | None:
    summary = path / "summary.json"
    if not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _resolve_inputs(run: TrainedRun, acfg: DictConfig) -> tuple[Path, str]:
    pairs_file = Path(str(acfg.pairs_file)) if acfg.get("pairs_file") else run.pairs_file
    if not pairs_file.is_file():
        raise DataError(f"{run.path}: its pairs file {pairs_file} (the train run's input_dir) does not exist from "
                        f"{Path.cwd()}; run from where it was trained, or give analyze.pairs_file=")
    reference = str(acfg.reference_model) if acfg.get("reference_model") else run.reference_model
    return pairs_file, reference


def analyse_run(run: TrainedRun, out: Path, cfg: DictConfig) -> dict[str, Any]:
    """Rewards, anchors and statistics of one run into `out`; its summary (reused when already made for it)."""
    acfg = cfg.analyze
    pairs_file, reference = _resolve_inputs(run, acfg)
    locator = _locator(run, acfg)
    settings = OmegaConf.to_container(acfg, resolve=True)
    # What the rewards depend on (pairs.jsonl: two forward passes per pair), and what the statistics add: a change of
    # the second recomputes the statistics from the stored rewards, never the forward passes.
    rewards_key = {"format": REWARDS_FORMAT, "run": run.manifest.get("config_hash"),
                   "run_finished": run.manifest.get("finished_at"), "pairs_sha256": file_sha256(pairs_file)[:16],
                   "reference": reference, "first_error": locator,
                   "settings": {k: settings.get(k) for k in ("max_pairs", "sample_seed", "dtype")}}
    made_for = {"rewards": rewards_key, "statistics": STATISTICS_FORMAT,
                "settings": {k: settings.get(k) for k in ("window", "confidence", "bootstrap_resamples",
                                                          "bootstrap_seed")}}
    previous = _read_summary(out)
    if previous is not None and previous.get("made_for") == made_for:
        log.info("analyze: %s already analysed in %s", run.name, out)
        return previous
    if previous is not None and (previous.get("made_for") or {}).get("rewards") == rewards_key \
            and (out / "pairs.jsonl").is_file():
        log.info("analyze: %s: statistics recomputed from the rewards in %s", run.name, out / "pairs.jsonl")
        rows = [row for _, row in iter_jsonl(out / "pairs.jsonl")]
    else:
        rows = _compute_rows(run, pairs_file, reference, locator, cfg)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(out / "pairs.jsonl", rows)
    processed = [_pair_rewards(row) for row in rows]
    per_pair = pd.DataFrame([{"id": p.pair_id, **pair_statistics(p)} for p in processed])
    atomic_write_text(out / "pair_statistics.csv", per_pair.to_csv(index=False))
    window = acfg.window
    aligned = aligned_frame(processed, before=int(window.before), after=int(window.after))
    atomic_write_text(out / "aligned.csv", aligned.to_csv(index=False))
    stats = summarize_pairs(per_pair.to_dict("records"), confidence=float(acfg.confidence),
                            n_resamples=int(acfg.bootstrap_resamples), seed=int(acfg.bootstrap_seed))
    summary = {
        "made_for": made_for, "dir": out.name, "run": run.name, "group": run.group, "seed": run.seed,
        "path": str(run.path),
        "method": run.get("method.name"), "granularity": run.granularity, "beta": run.beta,
        "first_error": locator, "pairs": len(rows), "heldout_pairs": sum(r["heldout"] for r in rows),
        "rejected_with_error": sum(r["rejected"]["first_error"] is not None for r in rows),
        "chosen_with_error": sum(r["chosen"]["first_error"] is not None for r in rows),
        "diverge_before_error": sum(p.first_error is not None and p.first_divergence < p.first_error
                                    for p in processed),
        "statistics": {name: _interval(value) for name, value in stats.items()},
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def _pair_rewards(row: dict) -> PairRewards:
    error = row["rejected"]["first_error"]
    return PairRewards(str(row["id"]), np.asarray(row["chosen"]["rewards"], float),
                       np.asarray(row["rejected"]["rewards"], float), int(row["first_divergence"]),
                       None if error is None else int(error["token"]))


def _compute_rows(run: TrainedRun, pairs_file: Path, reference: str, locator: str, cfg: DictConfig) -> list[dict]:
    """Per pair: tokens, implicit rewards, segment sums and anchors (two forward passes: policy, reference)."""
    acfg = cfg.analyze
    import torch

    from adpo.models import load_causal_lm, load_policy, load_tokenizer, resolve_device
    from adpo_eval.implicit_rewards import implicit_rewards, response_logps, training_pairs

    tokenizer_source = run.policy_dir if (run.policy_dir / "tokenizer_config.json").is_file() \
        else str(run.get("model.name_or_path"))
    tokenizer = load_tokenizer(tokenizer_source, bool(run.get("model.trust_remote_code", False)))
    pairs = training_pairs(pairs_file, tokenizer, tokenization=run.tokenization,
                           length_policy=str(run.get("train.length_policy", "truncate")),
                           heldout_pairs=int(run.get("train.heldout_pairs") or 0), seed=int(run.seed or 0))
    pairs = _subset(pairs, acfg.get("max_pairs"), int(acfg.sample_seed))
    device = resolve_device(acfg.device)
    dtype = acfg.get("dtype") or run.get("model.dtype", "auto")
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, batch_size=int(acfg.batch_size), device=device)
    tokenized = [p.tokens for p in pairs]
    every = progress_every(cfg)
    logps = {}
    for name, load in (("policy", lambda: load_policy(run.policy_dir, dtype=dtype, device=device,
                                                       dtype_key="analyze.dtype")),
                       ("reference", lambda: load_causal_lm(reference, dtype=dtype, device=device,
                                                            dtype_key="analyze.dtype"))):
        model = load()
        with Progress(len(tokenized), f"analyze {run.name}: {name} log-probs", "pair",
                      bar=bool(cfg.get("progress", True)), every_s=every) as bar:
            logps[name] = response_logps(model, tokenized, **kwargs, on_batch=bar.update)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rewards = implicit_rewards(logps["policy"], logps["reference"], run.beta)

    return [_pair_row(pair, r_chosen.numpy(), r_rejected.numpy(), tokenizer, locator, run)
            for pair, (r_chosen, r_rejected) in zip(pairs, rewards)]


def _subset(pairs: list, max_pairs: int | None, seed: int) -> list:
    if max_pairs is None or len(pairs) <= int(max_pairs):
        return pairs
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=int(max_pairs), replace=False))
    return [pairs[i] for i in keep]


def _error_record(tokenizer, ids: Sequence[int], found: FirstError | None) -> dict | None:
    if found is None:
        return None
    token = token_at_char(tokenizer, ids, found.char)
    if token is None:
        return None
    return {"token": token, "char": found.char, "kind": found.kind, "statement": found.statement,
            "expected": found.expected}


def _segment_sums(rewards: np.ndarray, granularity: str) -> list[float]:
    import torch

    from adpo.segments import parse_granularity, segment_counts, segment_ids, segment_sums

    gran = parse_granularity(granularity)
    values = torch.as_tensor(rewards, dtype=torch.float64).unsqueeze(0)
    mask = torch.ones_like(values, dtype=torch.bool)
    count = int(segment_counts(mask.sum(-1), gran)[0])
    return segment_sums(values, segment_ids(mask, gran), max(count, 1))[0, :count].tolist()


def _pair_row(pair, r_chosen: np.ndarray, r_rejected: np.ndarray, tokenizer, locator: str, run: TrainedRun) -> dict:
    question = pair.question
    sides = {}
    for side, ids, rewards in (("chosen", pair.tokens.chosen_ids, r_chosen),
                               ("rejected", pair.tokens.rejected_ids, r_rejected)):
        text = response_text(tokenizer, ids)
        try:
            found = first_error(locator, question, text) if question is not None or locator == "arithmetic" else None
        except ValueError as e:  # a question the toy solver cannot read: not a toy pair
            raise DataError(f"{pair.record.where}: field 'question': analyze.first_error={locator}: {e}") from None
        sides[side] = {"tokens": [tokenizer.decode([i]) for i in ids], "rewards": [_short(v) for v in rewards],
                       "segments": [_short(v) for v in _segment_sums(rewards, run.granularity)],
                       "first_error": _error_record(tokenizer, ids, found)}
    return {"id": pair.record.id, "problem_id": pair.problem_id, "heldout": pair.heldout,
            "first_divergence": first_divergence(pair.tokens.chosen_ids, pair.tokens.rejected_ids), **sides}


def _short(value: float) -> float:
    """Seven significant digits: float32's precision, which the log-probs were computed in."""
    return float(f"{float(value):.7g}")


def _interval(value: Interval | None) -> dict | None:
    return None if value is None else {"estimate": value.estimate, "low": value.low, "high": value.high,
                                       "n": value.n}


def aligned_frame(pairs: Sequence[PairRewards], *, before: int, after: int) -> pd.DataFrame:
    """Mean rewards by offset from each anchor: the rejected answer around its first error, chosen and rejected
    around their first divergence."""
    frames = []
    for anchor, response, series, anchors in (
            ("first_error", "rejected", [p.rejected for p in pairs], [p.first_error for p in pairs]),
            ("first_divergence", "chosen", [p.chosen for p in pairs], [p.first_divergence for p in pairs]),
            ("first_divergence", "rejected", [p.rejected for p in pairs], [p.first_divergence for p in pairs])):
        offsets, means, counts = aligned_mean(series, anchors, before=before, after=after)
        frames.append(pd.DataFrame({"anchor": anchor, "response": response, "offset": offsets, "mean_reward": means,
                                    "pairs": counts}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- all runs

def write_combined(out: Path, summaries: Sequence[dict], cfg: DictConfig) -> dict[str, Any]:
    runs = pd.DataFrame([{"run": s["run"], "group": s["group"], "seed": s["seed"], "method": s["method"],
                          "granularity": s["granularity"], "beta": s["beta"], "pairs": s["pairs"],
                          "rejected_with_error": s["rejected_with_error"], "chosen_with_error": s["chosen_with_error"],
                          "diverge_before_error": s["diverge_before_error"],
                          **{f"{name}": (s["statistics"].get(name) or {}).get("estimate") for name in STATISTICS},
                          **{f"{name}_low": (s["statistics"].get(name) or {}).get("low") for name in STATISTICS},
                          **{f"{name}_high": (s["statistics"].get(name) or {}).get("high") for name in STATISTICS}}
                         for s in summaries])
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    confidence = float(cfg.analyze.confidence)
    group_rows = []
    for group, block in runs.groupby("group", sort=False):
        stats = summarize_runs(block.to_dict("records"), confidence=confidence)
        row = {"group": group, "method": block["method"].iloc[0], "granularity": block["granularity"].iloc[0],
               "runs": len(block), "pairs": int(block["pairs"].sum())}
        for name, value in stats.items():
            row[name] = None if value is None else value.estimate
            row[f"{name}_low"] = None if value is None else value.low
            row[f"{name}_high"] = None if value is None else value.high
        group_rows.append(row)
    groups = pd.DataFrame(group_rows)
    atomic_write_text(out / "groups.csv", groups.to_csv(index=False))
    written = {"runs": "runs.csv", "groups": "groups.csv"}
    aligned = _aligned_by_group(out, summaries)
    if aligned is not None:
        atomic_write_text(out / "aligned.csv", aligned.to_csv(index=False))
        written["aligned"] = "aligned.csv"
    if cfg.analyze.plot:
        from adpo_eval.process_plot import plot_aligned, plot_share

        if aligned is not None and plot_aligned(aligned, out / "aligned.png"):
            written["aligned_plot"] = "aligned.png"
        if plot_share(groups, runs, out / "share.png", confidence):
            written["share_plot"] = "share.png"
    atomic_write_text(out / "process.md", process_markdown(groups, runs, summaries, cfg))
    written["report"] = "process.md"
    _log_to_wandb(cfg, groups, runs, [out / written[k] for k in ("aligned_plot", "share_plot") if k in written])
    excess = {str(g["group"]): None if pd.isna(g.get("excess_share_after_error")) else
              float(g["excess_share_after_error"]) for _, g in groups.iterrows()}
    return {"runs_analysed": len(summaries), "excess_share_after_error": excess, **written}


def _aligned_by_group(out: Path, summaries: Sequence[dict]) -> pd.DataFrame | None:
    """The runs' aligned means averaged over the runs of each group (each run weighs the same)."""
    frames = []
    for s in summaries:
        file = out / "runs" / s["dir"] / "aligned.csv"
        if file.is_file():
            frame = pd.read_csv(file)
            frame["group"], frame["run"] = s["group"], s["run"]
            frames.append(frame)
    if not frames:
        return None
    every = pd.concat(frames, ignore_index=True)
    return (every.groupby(["group", "anchor", "response", "offset"], sort=False)
            .agg(mean_reward=("mean_reward", "mean"), runs=("run", "nunique"), pairs=("pairs", "sum"))
            .reset_index())


def _log_to_wandb(cfg: DictConfig, groups: pd.DataFrame, runs: pd.DataFrame, plots: Sequence[Path]) -> None:
    """One wandb run per analysis (job type "analyze"): the group and run tables, the plots as images."""
    from adpo.tracking import log_tables_and_images

    log_tables_and_images(cfg, "analyze", {"groups": groups, "runs": runs}, {p.stem: p for p in plots})


def _fmt(estimate: Any, low: Any, high: Any) -> str:
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return "-"
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return f"{estimate:+.3f}"
    return f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"


def process_markdown(groups: pd.DataFrame, runs: pd.DataFrame, summaries: Sequence[dict], cfg: DictConfig) -> str:
    pct = round(100 * float(cfg.analyze.confidence))
    lines = [f"# Where the preference acts ({cfg.get('experiment_name')})", "",
             f"{len(summaries)} trained runs below {cfg.input_dir}; implicit rewards r_t = beta * (log pi - log "
             "pi_ref) per response token, on the pairs each run trained on (analyze.max_pairs of them).", "",
             f"## Per group of runs (mean over seeds, {pct}% Student-t interval over seeds; one seed: no interval)", ""]
    shown_groups = pd.DataFrame([{"group": g["group"], "runs": g["runs"], "pairs": g["pairs"],
                                  **{name: _fmt(g[name], g[f"{name}_low"], g[f"{name}_high"]) for name in SHOWN}}
                                 for _, g in groups.iterrows()])
    lines += [to_markdown(shown_groups).rstrip()]
    lines += ["", f"## Per run (mean over pairs, {pct}% bootstrap interval over pairs)", ""]
    shown_runs = pd.DataFrame([{"run": r["run"], "pairs": r["pairs"],
                                "rejected with an error": r["rejected_with_error"],
                                "chosen with an error": r["chosen_with_error"],
                                "diverge before the error": r["diverge_before_error"],
                                **{name: _fmt(r[name], r[f"{name}_low"], r[f"{name}_high"]) for name in SHOWN}}
                               for _, r in runs.iterrows()])
    lines += [to_markdown(shown_runs).rstrip()]
    lines += ["", "## The statistics", ""]
    lines += [f"- `{name}`: {text}" for name, text in STATISTICS.items()]
    lines += ["", "Per-pair values (tokens, rewards, segment sums, anchors) are in runs/<run>/pairs.jsonl and the "
              "statistics of each pair in runs/<run>/pair_statistics.csv; mean rewards by offset from the anchors in "
              "aligned.csv (aligned.png)."]
    return "\n".join(lines) + "\n"


main = stage_main("analyze")(run)

if __name__ == "__main__":
    main()
