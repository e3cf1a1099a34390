"""Stage 'sample': prepared train split -> n graded completions per question, in resumable shards.

Each shard (sampling.shard_size questions) is generated, graded and written atomically by adpo.generation.shards;
a killed run resumes at the first missing shard, and shard i is always drawn with seed `sampling.seed + i`, so a
resumed run writes what an uninterrupted one would. The model is loaded only when a shard is left to do. Samples
made under another config (model, sampling settings) or for other problems are never deleted or overwritten: the
stage stops with adpo.config_diff.OutputConflict, naming what differs.
"""

from __future__ import annotations

import logging
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
from adpo.io import DataError, atomic_write_json
from adpo.manifest import fingerprint, identity, is_complete, write_manifest
from adpo.progress import mean_of, progress_every
from adpo.tracking import log_stage_summary

log = logging.getLogger(__name__)
PROMPT_IN_ROWS = ("all", "first")
OUTPUT_OPTION = "paths.samples"  # the key that names output_dir, offered when it holds another config's samples


# The plan's item ids say which problems; grading workers do not change a grade.
NOT_IN_SHARD_FINGERPRINT = ("sampling.max_problems", "sampling.grade_workers")


def work_identity(config: Any) -> dict[str, Any]:
    """What decides the samples (a DictConfig, or a manifest's recorded config); other config changes (method,
    train...) keep finished shards."""
    return identity(config, "sample", also_not_hashed=NOT_IN_SHARD_FINGERPRINT)


def shard_made_for(cfg: DictConfig, problems_file: Path) -> dict[str, Any]:
    """Everything that decides a shard's rows, recorded with the shards (its hash is their fingerprint)."""
    return {**work_identity(cfg), "problems": fingerprint(problems_file)}


def manifest_made_for(config: Any, inputs: Mapping[str, str]) -> dict[str, Any]:
    return {**work_identity(config), "inputs": dict(inputs)}


def sample_rows(graded: Sequence[GradedProblem], prompt_in_rows: str) -> list[dict[str, Any]]:
    """One row per completion, in problem order then sample order."""
    rows = []
    for g in graded:
        for k, (completion, grade) in enumerate(zip(g.completions, g.grades, strict=True)):
            row = {"problem_id": g.problem.id, "dataset": g.problem.dataset, "question": g.problem.question,
                   "gold": g.problem.gold, "prompt": g.prompt, "sample_index": k, "text": completion.text,
                   "extracted": grade.extracted, "correct": bool(grade.correct),
                   "finish_reason": completion.finish_reason, "num_tokens": len(completion.token_ids)}
            if k > 0 and prompt_in_rows == "first":
                # A few-shot prompt is ~10x the size of a response: written once per question, not n times.
                row["prompt"] = None
            if grade.error:
                row["grade_error"] = grade.error
            rows.append(row)
    return rows


def select_problems(problems: Sequence[Problem], max_problems: int | None) -> list[Problem]:
    return list(problems if max_problems is None else problems[: int(max_problems)])


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    total = max(len(rows), 1)
    return {"samples": len(rows), "questions": len({r["problem_id"] for r in rows}),
            "sample_accuracy": sum(r["correct"] for r in rows) / total,
            "no_answer_rate": sum(r["extracted"] is None for r in rows) / total,
            "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / total,
            "mean_tokens": sum(r.get("num_tokens", 0) for r in rows) / total}


def run(cfg: DictConfig) -> Path:
    input_dir, output_dir = Path(cfg.input_dir), Path(cfg.output_dir)
    s = cfg.sampling
    problems_file = input_dir / f"{s.split}.jsonl"
    model_path = str(cfg.model.name_or_path)
    inputs = [problems_file, model_path]
    if is_complete(output_dir, identity(cfg, "sample"), inputs):
        log.info("sample: %s is complete for this config and these inputs; nothing to do", output_dir)
        return output_dir
    if not problems_file.is_file():
        raise DataError(f"{problems_file}: file not found (run the prepare stage, or set input_dir)")
    problems = select_problems(read_problems(problems_file), s.max_problems)
    if not problems:
        raise DataError(f"{problems_file}: no problems")
    if s.prompt_in_rows not in PROMPT_IN_ROWS:
        raise ValueError(f"sampling.prompt_in_rows must be one of {PROMPT_IN_ROWS}, got {s.prompt_in_rows!r}")
    # Before anything is written: samples of another model or settings in output_dir are never replaced.
    check_manifest(output_dir, manifest_made_for, cfg, inputs, option=OUTPUT_OPTION)

    def mark_running() -> None:
        # Unfinished until the last shard is in (the pairs stage checks); written once the shards are known ours.
        write_manifest(output_dir, "sample", cfg, inputs, status="running", key=identity(cfg, "sample"))

    with GradedGeneration(cfg.generation, model_path, cfg.model.prompt_format, prompt_style=s.prompt_style,
                          num_shots=s.num_shots, n=s.n, temperature=s.temperature, top_p=s.top_p,
                          max_tokens=s.max_tokens, seed=s.seed, grade_workers=s.grade_workers,
                          grade_timeout_s=s.grade_timeout_s,
                          trailing_space=trailing_space_of(cfg.model)) as graded:
        rows = run_sharded(problems, lambda shard, index: sample_rows(graded(shard, index), s.prompt_in_rows),
                           output_dir, item_id=lambda p: p.id, shard_size=int(s.shard_size),
                           fingerprint=shard_made_for(cfg, problems_file), progress=bool(cfg.progress),
                           desc=f"sampling n={s.n}", option=OUTPUT_OPTION, on_start=mark_running,
                           progress_every=progress_every(cfg),
                           figures=lambda done: {"sample_accuracy": mean_of(done, "correct")})
    summary = summarize(rows)
    # The backend that ran: not the configured one where vLLM fell back to transformers (generation.cpu_fallback=hf).
    summary["generated_with"] = graded.backend_used
    atomic_write_json(output_dir / "summary.json", summary)
    print(f"sample: {summary['samples']} samples of {summary['questions']} questions -> {output_dir}: "
          f"accuracy {summary['sample_accuracy']:.3f}, no answer {summary['no_answer_rate']:.3f}, "
          f"cut at max_tokens {summary['truncated_rate']:.3f}", flush=True)
    write_manifest(output_dir, "sample", cfg, inputs, key=identity(cfg, "sample"),
                   outputs={"shards": "shard-*.jsonl", **summary})
    columns = ["problem_id", "sample_index", "gold", "extracted", "correct", "finish_reason", "num_tokens", "text"]
    log_stage_summary(cfg, "sample", summary, rows=rows, columns=columns)
    return output_dir


main = stage_main("sample")(run)

if __name__ == "__main__":
    main()
