"""Generate and grade a shard of problems: what the sample and eval stages share, each writing its own rows.

    with GradedGeneration(cfg.generation, model_path, prompt_format, prompt_style=..., n=..., ...) as graded:
        rows = run_sharded(problems, lambda shard, i: [my_row(g) for g in graded(shard, i)], out_dir, ...)

The model and the grading pool start on first use: a rerun whose shards are all written loads neither.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpo.data.prompts import build_prompt, stop_sequences
from adpo.data.records import Problem
from adpo.generation import Completion, Generator, load_generator


@dataclass(frozen=True)
class GradedProblem:
    problem: Problem
    prompt: str
    completions: list[Completion]
    grades: list[Any]  # adpo.grading.Grade, one per completion


class GradedGeneration:
    """(problems, shard_index) -> one GradedProblem per problem, in order. Sampling is seeded `seed + shard_index`, so
    a resumed run draws what an uninterrupted one would; `stop=None` stops at the dataset's next exemplar;
    `trailing_space`: plain prompts in the earlier form ending in "Answer: " (model.prompt_trailing_space)."""

    def __init__(self, generation_cfg: Mapping[str, Any], model_path: str | Path, prompt_format: str, *,
                 prompt_style: str, num_shots: int | None, n: int, temperature: float, top_p: float,
                 max_tokens: int, seed: int, grade_workers: int, grade_timeout_s: float,
                 stop: Sequence[str] | None = None, trailing_space: bool = False) -> None:
        self.generation_cfg = generation_cfg
        self.model_path = str(model_path)
        self.prompt_format = prompt_format
        self.prompt_style = prompt_style
        self.num_shots = num_shots
        self.n = int(n)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_tokens = int(max_tokens)
        self.seed = int(seed)
        self.grade_workers = int(grade_workers)
        self.grade_timeout_s = float(grade_timeout_s)
        self.stop = None if stop is None else list(stop)
        self.trailing_space = bool(trailing_space)
        self._generator: Generator | None = None
        self._grader = None
        # What this process generated (nothing when every shard was already written): the eval stage's speed.
        self.generated_tokens = 0
        self.generation_seconds = 0.0

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = load_generator(self.generation_cfg, self.model_path, prompt_format=self.prompt_format)
        return self._generator

    @property
    def backend_used(self) -> str | None:
        """The backend that generated ("hf" where vLLM fell back to transformers); None if nothing was generated."""
        return None if self._generator is None else self._generator.backend

    @property
    def grader(self):
        if self._grader is None:
            from adpo.grading import Grader

            self._grader = Grader(workers=self.grade_workers, timeout_s=self.grade_timeout_s)
        return self._grader

    def prompt(self, problem: Problem) -> str:
        return build_prompt(problem, style=self.prompt_style, prompt_format=self.prompt_format,
                            tokenizer=self.generator.tokenizer, num_shots=self.num_shots,
                            trailing_space=self.trailing_space)

    def __call__(self, problems: Sequence[Problem], shard_index: int) -> list[GradedProblem]:
        prompts = [self.prompt(p) for p in problems]
        graded: list[GradedProblem | None] = [None] * len(problems)
        # One generate() call per dataset: the stop string is the dataset's ("\n\nQuestion:" / "\n\nProblem:").
        for dataset in sorted({p.dataset for p in problems}):
            idx = [i for i, p in enumerate(problems) if p.dataset == dataset]
            start = time.perf_counter()
            completions = self.generator.generate(
                [prompts[i] for i in idx], n=self.n, temperature=self.temperature, top_p=self.top_p,
                max_tokens=self.max_tokens, seed=self.seed + shard_index,
                stop=self.stop if self.stop is not None else stop_sequences(dataset, self.prompt_format))
            self.generation_seconds += time.perf_counter() - start
            self.generated_tokens += sum(c.num_tokens for outs in completions for c in outs)
            texts = [c.text for outs in completions for c in outs]
            golds = [problems[i].gold for i, outs in zip(idx, completions, strict=True) for _ in outs]
            grades = iter(self.grader.grade_batch(dataset, texts, golds))
            for i, outs in zip(idx, completions, strict=True):
                graded[i] = GradedProblem(problems[i], prompts[i], outs, [next(grades) for _ in outs])
        return graded  # type: ignore[return-value]

    def close(self) -> None:
        if self._grader is not None:
            self._grader.close()
        if self._generator is not None:
            self._generator.close()

    def __enter__(self) -> GradedGeneration:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
