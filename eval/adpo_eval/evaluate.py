"""Stage 'eval': a model (directory or hub id) -> per-problem predictions and metrics on a test split.

Protocol (method.md): GSM8K 8-shot chain of thought, MATH 4-shot Minerva; greedy; at most eval.max_new_tokens new
tokens; stop at the next exemplar ("\\n\\nQuestion:" / "\\n\\nProblem:"). Problems come from the prepare stage's
`<data_dir>/<split>.jsonl`, or straight from the data config (cfg.data) when `data_dir=null`.

Outputs in output_dir: shards/shard-*.jsonl (written as generation goes; a killed run resumes at the first missing
shard), predictions.jsonl (one row per problem: id, prompt, output, extracted, gold, correct, finish_reason,
num_tokens, subject, level, ...), metrics.json (accuracy, counts, per subject and level, generation speed), and
manifest.json. Metrics and a table of the outputs go to wandb (offline files by default). Shards or a manifest of
another model, protocol or problem set are never replaced: the stage stops with adpo.config_diff.OutputConflict.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adpo.config import stage_main
from adpo.config_diff import check_manifest
from adpo.data.prompts import trailing_space_of
from adpo.data.records import Problem, read_problems
from adpo.generation.graded import GradedGeneration, GradedProblem
from adpo.generation.shards import run_sharded
from adpo.io import DataError, atomic_write_json, atomic_write_jsonl
from adpo.manifest import MANIFEST, fingerprint, identity, is_complete, write_manifest
from adpo.progress import mean_of, progress_every
from adpo.tracking import init_wandb

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SHARDS = "shards"
# Settings that do not change a prediction: kept out of the shards' fingerprint so that finished shards stay valid.
NOT_IN_SHARD_FINGERPRINT = ("limit", "grade_workers", "shard_size", "wandb_table")
OUTPUT_OPTION = "paths.eval"  # the key that names output_dir, offered when it holds another config's predictions


def model_inputs(model_dir: str) -> list[str]:
    """What identifies the model: its directory, and the stage directory that made it (whose manifest changes when
    the model is retrained); a hub id is identified by its name. A LoRA adapter directory (the train stage's default
    output) is loaded on its base model, which identifies it too."""
    from adpo.models import adapter_info

    path = Path(model_dir)
    inputs = [str(model_dir)]
    if path.is_dir() and (path.parent / MANIFEST).is_file():
        inputs.append(str(path.parent))
    adapter = adapter_info(model_dir)
    if adapter is not None:
        inputs += [p for p in model_inputs(adapter["base_model"]) if p not in inputs]
    return inputs


def load_eval_problems(cfg: DictConfig) -> tuple[list[Problem], Path | None]:
    """The problems to evaluate and the prepared file they came from (None when read from the data config)."""
    split, limit = cfg.eval.split, cfg.eval.limit
    if cfg.get("data_dir"):
        path = Path(cfg.data_dir) / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: file not found (run the prepare stage, or set data_dir=null to read the "
                            f"data config '{cfg.data.get('name')}' directly)")
        problems = read_problems(path)
    else:
        from adpo.data.loaders import load_problems

        path, problems = None, load_problems(cfg.data, split)
    if limit is not None:
        problems = problems[: int(limit)]
    if not problems:
        raise DataError(f"{path or 'data config'}: no problems in split {split!r}")
    return problems, path


def prediction_row(graded: GradedProblem) -> dict[str, Any]:
    problem, completion, grade = graded.problem, graded.completions[0], graded.grades[0]
    row = {"id": problem.id, "dataset": problem.dataset, "question": problem.question, "prompt": graded.prompt,
           "output": completion.text, "extracted": grade.extracted, "gold": problem.gold,
           "correct": bool(grade.correct), "finish_reason": completion.finish_reason,
           "num_tokens": completion.num_tokens, "subject": problem.subject, "level": problem.level}
    if getattr(grade, "error", None):
        row["grade_error"] = grade.error
    return row


def _accuracy(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    correct = sum(r["correct"] for r in rows)
    return {"accuracy": correct / len(rows) if rows else 0.0, "correct": correct, "total": len(rows)}


def compute_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and counts, overall and per subject and level (MATH), from prediction rows."""
    metrics = _accuracy(rows)
    n = max(len(rows), 1)
    metrics.update(
        no_answer=sum(r["extracted"] is None for r in rows),
        truncated=sum(r["finish_reason"] == "length" for r in rows),
        grade_errors=sum(bool(r.get("grade_error")) for r in rows),
        mean_tokens=sum(r["num_tokens"] for r in rows) / n,
    )
    for key, name in (("subject", "per_subject"), ("level", "per_level")):
        groups: dict[str, list] = defaultdict(list)
        for r in rows:
            if r.get(key) is not None:
                groups[str(r[key])].append(r)
        if groups:
            metrics[name] = {k: _accuracy(v) for k, v in sorted(groups.items())}
    return metrics


def work_identity(config: Any) -> dict[str, Any]:
    """What decides a prediction (a DictConfig, or a manifest's recorded config); the plan's item ids say which
    problems."""
    return identity(config, "eval", also_not_hashed=[f"eval.{k}" for k in NOT_IN_SHARD_FINGERPRINT])


def made_for(config: Any, inputs: Mapping[str, str]) -> dict[str, Any]:
    """What predictions are made for: the work identity and the inputs' fingerprints (the model among them: its
    path is not hashed). Recorded with the shards, whose fingerprint is its hash, and compared with a manifest's."""
    return {**work_identity(config), "inputs": dict(inputs)}


def input_fingerprints(inputs: Sequence[str]) -> dict[str, str]:
    return {str(p): fingerprint(p) for p in inputs}


def log_to_wandb(cfg: DictConfig, metrics: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    run = init_wandb(cfg, job_type="eval")
    if run is None:
        return
    import wandb

    # The training run of the evaluated policy (its wandb id beside the model): one click from accuracy to curves.
    train_run_id = Path(str(metrics["model"])).parent / "wandb_run_id"
    if train_run_id.is_file():
        run.config.update({"train_run_id": train_run_id.read_text().strip()}, allow_val_change=True)

    flat = {f"eval/{k}": metrics[k] for k in ("accuracy", "correct", "total", "no_answer", "truncated",
                                                "mean_tokens")}
    if metrics.get("tokens_per_s") is not None:
        flat["eval/tokens_per_s"] = metrics["tokens_per_s"]
    for group in ("per_subject", "per_level"):
        for key, value in metrics.get(group, {}).items():
            flat[f"eval/{group.removeprefix('per_')}/{key}"] = value["accuracy"]
    run.log(flat)
    run.summary.update(flat)
    if cfg.eval.wandb_table:
        columns = ["id", "subject", "level", "gold", "extracted", "correct", "finish_reason", "num_tokens",
                   "question", "output"]
        run.log({"eval/predictions": wandb.Table(columns=columns, data=[[r.get(c) for c in columns]
                                                                        for r in rows])})
    run.finish()


def run(cfg: DictConfig) -> Path:
    output_dir = Path(cfg.output_dir)
    model_dir = str(cfg.model_dir)
    problems, problems_file = load_eval_problems(cfg)
    inputs = model_inputs(model_dir) + ([str(problems_file)] if problems_file else [])
    if is_complete(output_dir, identity(cfg, "eval"), inputs):
        log.info("eval: %s is complete for this config and these inputs; nothing to do", output_dir)
        return output_dir
    # Before anything is written: predictions of another model or protocol in output_dir are never replaced.
    check_manifest(output_dir, made_for, cfg, inputs, option=OUTPUT_OPTION)

    def mark_running() -> None:  # once the shards on disk are known to be this run's
        write_manifest(output_dir, "eval", cfg, inputs, status="running", key=identity(cfg, "eval"))

    e = cfg.eval
    datasets = sorted({p.dataset for p in problems})
    with GradedGeneration(cfg.generation, model_dir, cfg.model.prompt_format, prompt_style=e.prompt_style,
                          num_shots=e.num_shots, n=1, temperature=e.temperature, top_p=e.top_p,
                          max_tokens=e.max_new_tokens, seed=e.seed, grade_workers=e.grade_workers,
                          grade_timeout_s=e.grade_timeout_s, stop=e.stop,
                          trailing_space=trailing_space_of(cfg.model)) as evaluator:
        rows = run_sharded(problems, lambda shard, index: [prediction_row(g) for g in evaluator(shard, index)],
                           output_dir / SHARDS, item_id=lambda p: p.id, shard_size=int(e.shard_size),
                           fingerprint=made_for(cfg, input_fingerprints(inputs)), progress=bool(cfg.progress),
                           desc=f"eval {'+'.join(datasets)}", option=OUTPUT_OPTION, on_start=mark_running,
                           progress_every=progress_every(cfg),
                           figures=lambda done: {"accuracy": mean_of(done, "correct")})

    metrics = compute_metrics(rows)
    metrics.update(
        model=model_dir,
        dataset=datasets[0] if len(datasets) == 1 else datasets,
        data=cfg.data.get("name") if problems_file is None else str(problems_file),
        split=cfg.eval.split,
        n_problems=len(problems),
        prompt_style=cfg.eval.prompt_style,
        num_shots=cfg.eval.num_shots,
        max_new_tokens=int(cfg.eval.max_new_tokens),
        backend=cfg.generation.backend,
        # What ran: differs from `backend` where vLLM fell back to transformers (generation.cpu_fallback=hf).
        generated_with=evaluator.backend_used,
        run_name=cfg.get("run_name"),
        # Speed of the generation done by this process (None when every shard was already written).
        generated_tokens=evaluator.generated_tokens,
        generation_seconds=round(evaluator.generation_seconds, 3),
        tokens_per_s=(evaluator.generated_tokens / evaluator.generation_seconds
                      if evaluator.generation_seconds > 0 else None),
    )
    atomic_write_jsonl(output_dir / PREDICTIONS, rows)
    atomic_write_json(output_dir / METRICS, metrics)
    log_to_wandb(cfg, metrics, rows)
    speed = f", {metrics['tokens_per_s']:.0f} tokens/s" if metrics["tokens_per_s"] else ""
    print(f"eval: accuracy {metrics['accuracy']:.4f} ({metrics['correct']}/{metrics['total']}) on "
          f"{metrics['dataset']} {cfg.eval.split}, no answer {metrics['no_answer']}, cut at max tokens "
          f"{metrics['truncated']}{speed} -> {output_dir}", flush=True)
    write_manifest(output_dir, "eval", cfg, inputs, key=identity(cfg, "eval"),
                   outputs={"predictions": PREDICTIONS, "metrics": METRICS, "accuracy": metrics["accuracy"],
                            "total": metrics["total"]})
    _add_to_model_card(model_dir, output_dir, metrics)
    return output_dir


def _add_to_model_card(model_dir: str, output_dir: Path, metrics: dict[str, Any]) -> None:
    """The accuracy into the evaluated model's card, when the train stage exported it (adpo.export); a model
    directory that cannot be written to (shared, read-only) keeps its card."""
    from adpo.model_card import add_eval_results

    try:
        if add_eval_results(model_dir, output_dir, metrics) is not None:
            log.info("eval: accuracy added to the model card %s/README.md", model_dir)
    except OSError as error:
        log.warning("eval: could not update the model card in %s: %s", model_dir, error)


main = stage_main("eval")(run)

if __name__ == "__main__":
    main()
