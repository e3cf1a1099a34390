"""Stage 'sample': prepared train split -> n graded completions per question, in resumable shards.

Each shard (sampling.shard_size questions) is generated, graded and written atomically by adpo.generation.shards;
a killed run resumes at the first missing shard, and shard i is always drawn with seed `sampling.seed + i`, so a
resumed run writes what an uninterrupted one would. The model is loaded only when a shard is left to do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adpo.config import stage_main
from adpo.data.prompts import build_prompt, stop_sequences
from adpo.data.records import Problem, read_problems
from adpo.generation import load_generator
from adpo.generation.shards import run_sharded
from adpo.io import DataError, atomic_write_json
from adpo.manifest import config_hash, fingerprint, identity, is_complete, write_manifest

log = logging.getLogger(__name__)
PROMPT_IN_ROWS = ("all", "first")


def shard_fingerprint(cfg: DictConfig, problems_file: Path) -> str:
    """Everything that decides a shard's rows; other config changes (method, train...) keep finished shards."""
    # The plan's item ids say which problems; grading workers do not change a grade.
    key = identity(cfg, "sample", also_not_hashed=("sampling.max_problems", "sampling.grade_workers"))
    return config_hash({**key, "problems": fingerprint(problems_file)})


class ShardSampler:
    """process(problems, shard_index) -> graded sample rows, for run_sharded. Loads the model on first use."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.s = cfg.sampling
        self._generator = None
        self._grader = None
        if self.s.prompt_in_rows not in PROMPT_IN_ROWS:
            raise ValueError(f"sampling.prompt_in_rows must be one of {PROMPT_IN_ROWS}, got {self.s.prompt_in_rows!r}")

    @property
    def generator(self):
        if self._generator is None:
            self._generator = load_generator(self.cfg.generation, str(self.cfg.model.name_or_path),
                                             prompt_format=self.cfg.model.prompt_format)
        return self._generator

    @property
    def grader(self):
        if self._grader is None:
            from adpo.grading import Grader

            self._grader = Grader(workers=int(self.s.grade_workers), timeout_s=float(self.s.grade_timeout_s))
        return self._grader

    def prompt(self, problem: Problem) -> str:
        return build_prompt(problem, style=self.s.prompt_style, prompt_format=self.cfg.model.prompt_format,
                            tokenizer=self.generator.tokenizer, num_shots=self.s.num_shots)

    def __call__(self, problems: list[Problem], shard_index: int) -> list[dict[str, Any]]:
        s = self.s
        prompts = [self.prompt(p) for p in problems]
        rows: list[dict[str, Any]] = []
        # One generate() call per dataset: the stop string is the dataset's ("\n\nQuestion:" / "\n\nProblem:").
        for dataset in sorted({p.dataset for p in problems}):
            idx = [i for i, p in enumerate(problems) if p.dataset == dataset]
            completions = self.generator.generate(
                [prompts[i] for i in idx], n=int(s.n), temperature=float(s.temperature), top_p=float(s.top_p),
                max_tokens=int(s.max_tokens), stop=stop_sequences(dataset, self.cfg.model.prompt_format),
                seed=int(s.seed) + shard_index)
            texts = [c.text for outs in completions for c in outs]
            golds = [problems[i].gold for i, outs in zip(idx, completions, strict=True) for _ in outs]
            grades = iter(self.grader.grade_batch(dataset, texts, golds))
            for i, outs in zip(idx, completions, strict=True):
                for k, c in enumerate(outs):
                    rows.append(self.row(problems[i], prompts[i], k, c, next(grades)))
        order = {p.id: n for n, p in enumerate(problems)}
        rows.sort(key=lambda r: (order[r["problem_id"]], r["sample_index"]))
        return rows

    def row(self, problem: Problem, prompt: str, k: int, completion, grade) -> dict[str, Any]:
        row = {"problem_id": problem.id, "dataset": problem.dataset, "question": problem.question,
               "gold": problem.gold, "prompt": prompt, "sample_index": k, "text": completion.text,
               "extracted": grade.extracted, "correct": bool(grade.correct),
               "finish_reason": completion.finish_reason, "num_tokens": len(completion.token_ids)}
        if k > 0 and self.s.prompt_in_rows == "first":
            # A few-shot prompt is ~10x the size of a response: written once per question, not n times.
            row["prompt"] = None
        if grade.error:
            row["grade_error"] = grade.error
        return row

    def close(self) -> None:
        if self._grader is not None:
            self._grader.close()
        if self._generator is not None:
            self._generator.close()


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
    # A 'running' manifest marks the directory as unfinished until the last shard is in (the pairs stage checks).
    write_manifest(output_dir, "sample", cfg, inputs, status="running", key=identity(cfg, "sample"))

    sampler = ShardSampler(cfg)
    try:
        rows = run_sharded(problems, sampler, output_dir, item_id=lambda p: p.id, shard_size=int(s.shard_size),
                           fingerprint=shard_fingerprint(cfg, problems_file), progress=bool(cfg.progress),
                           desc=f"sampling n={s.n}")
    finally:
        sampler.close()
    summary = summarize(rows)
    atomic_write_json(output_dir / "summary.json", summary)
    print(f"sample: {summary['samples']} samples of {summary['questions']} questions -> {output_dir}: "
          f"accuracy {summary['sample_accuracy']:.3f}, no answer {summary['no_answer_rate']:.3f}, "
          f"cut at max_tokens {summary['truncated_rate']:.3f}", flush=True)
    write_manifest(output_dir, "sample", cfg, inputs, key=identity(cfg, "sample"), outputs={"shards": "shard-*.jsonl", **summary})
    return output_dir


main = stage_main("sample")(run)

if __name__ == "__main__":
    main()
