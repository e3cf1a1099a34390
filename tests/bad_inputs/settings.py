"""Settings of the wrong type or out of range (issue 15: settings): refused when the config is composed, by
adpo.validation, with a message naming the key (`key: got X; allowed: ...`), before any stage does any work.

Each case composes a stage's config as its command line would (adpo.config.compose) and validates it, as every entry
point does first (adpo.stage_guard); the pipeline's plan and a sweep's launcher check their jobs the same way
(tests/test_validation.py runs them through the console scripts)."""

from __future__ import annotations

from pathlib import Path

from tests.bad_inputs import BadInput


def _validated(stage: str, *overrides: str) -> None:
    from adpo.config import compose
    from adpo.validation import validate_config

    validate_config(compose(stage, list(overrides)), stage)


def _setting(name: str, stage: str, overrides: list[str], expect: str, rule: str) -> BadInput:
    from adpo.validation import ConfigError

    return BadInput(name, lambda tmp: _validated(stage, *overrides), expect, ConfigError, rule)


def _pipeline_run_with_a_bad_granularity(tmp: Path) -> None:
    from adpo.config import compose
    from adpo.pipeline import plan

    overrides = ["experiment=quickstart", f"paths.root={tmp}", "pipeline.dry_run=true",
                 'pipeline.runs=[["method=adpo","method.granularity=static:0"]]']
    plan(compose("pipeline", overrides), overrides)


def _one_bad_job_of_a_sweep(tmp: Path) -> None:
    from adpo.config import compose
    from adpo.run_dirs import compose_job
    from adpo.validation import validate_jobs

    jobs = [compose_job([f"method.granularity={g}"], lambda o: compose("train", o)) for g in ("token", "adaptive:0")]
    validate_jobs("train", jobs)


def _unknown_keys_and_runtime_interpolations_pass(tmp: Path) -> None:
    # A new option nobody declared yet, and a value only a Hydra job resolves: neither is refused.
    _validated("train", "+train.my_new_option=3", "+method.extra={a: 1}",
               "train.reference_cache_dir=${hydra:runtime.cwd}/cache")


def _all(*patterns: str) -> str:
    """A regex matching a message that has every one of these patterns, in any order."""
    return "".join(f"(?=(?s:.*){p})" for p in patterns)


CASES = [
    _setting("beta-negative", "train", ["method.beta=-1"], r"method\.beta: got -1; allowed: a number > 0",
             "method.beta must be > 0"),
    _setting("beta-zero", "train", ["method.beta=0"], r"method\.beta: got 0;", "method.beta must be > 0"),
    _setting("granularity-unknown", "train", ["method.granularity=banana"],
             r"method\.granularity: got 'banana'; allowed: sequence, token, static:K or adaptive:M",
             "granularity: sequence | token | static:K | adaptive:M, K, M >= 1 (adpo.segments)"),
    _setting("granularity-static-0", "train", ["method.granularity=static:0"], r"method\.granularity: got 'static:0'",
             "static windows of at least one token"),
    _setting("granularity-adaptive-negative", "train", ["method.granularity=adaptive:-1"],
             r"method\.granularity: got 'adaptive:-1'", "at least one adaptive segment"),
    _setting("grid-reduction-with-windows", "train", ["method=cdpo_official", "method.granularity=static:4"],
             r"method\.reduction: got 'grid' with method\.granularity='static:4'",
             "the grid reduction is per position: token granularity only"),
    _setting("lr-not-a-number", "train", ["train.lr=abc"], r"train\.lr: got 'abc' \(a string\); allowed: a number > 0",
             "learning rates are numbers > 0"),
    _setting("lr-negative", "train", ["train.lr=-1"], r"train\.lr: got -1;", "learning rates are numbers > 0"),
    _setting("micro-batch-zero", "train", ["train.micro_batch_size=0"],
             r"train\.micro_batch_size: got 0; allowed: an integer >= 1", "batch sizes are integers >= 1"),
    _setting("seed-negative-named-once", "train", ["seed=-1"], r"^1 invalid setting .*\n  seed: got -1",
             "a key copied from another (train.seed: ${seed}) is reported as the one to change"),
    _setting("unresolved-reference", "train", ["train.lr=${train.learning_rate}"],
             r"train\.lr: got '\$\{train\.learning_rate\}', which does not resolve",
             "an interpolation to a key that does not exist is named"),
    _setting("prompt-longer-than-sequence", "train", ["model.max_prompt_length=600", "model.max_length=512"],
             r"model\.max_prompt_length: got 600; allowed: less than model\.max_length \(512\)",
             "the prompt must leave room for the response"),
    _setting("every-bad-key-at-once", "train", ["method.beta=-1", "train.lr=abc", "data.limit=0"],
             r"^3 invalid settings" + _all(r"method\.beta", r"train\.lr", r"data\.limit"),
             "one error lists every bad key"),
    _setting("training-settings-out-of-range", "train",
             ["train.gradient_accumulation_steps=-2", "train.epochs=1.5", "train.warmup_ratio=2", "train.schedule=step",
              "train.resume=maybe", "deepspeed.zero_optimization.stage=4", "model.dtype=fp8",
              "method.reduction=median"],
             _all(r"train\.gradient_accumulation_steps: got -2", r"train\.epochs: got 1\.5; allowed: an integer",
                  r"train\.warmup_ratio: got 2", r"train\.schedule: got 'step'; allowed: one of cosine, linear",
                  r"train\.resume: got 'maybe'; allowed: true or false",
                  r"deepspeed\.zero_optimization\.stage: got 4; allowed: an integer >= 0 and <= 3",
                  r"model\.dtype: got 'fp8'", r"method\.reduction: got 'median'"),
             "integers where counts are (epochs, steps), ratios in [0, 1], switches true/false, known names only"),
    _setting("snapshot-steps-not-steps", "train", ["train.snapshot_at=[4,0.5]", "train.snapshot_every=0"],
             _all(r"train\.snapshot_at: got \[4, 0\.5\]; allowed: a list of steps \(integers >= 1\), or null",
                  r"train\.snapshot_every: got 0; allowed: an integer >= 1, or null"),
             "snapshots are taken at whole steps from 1 on"),
    _setting("trajectory-settings-out-of-range", "trajectory",
             ["trajectory.kl_samples=0", "trajectory.confidence=1.5", "trajectory.saturation_margin=-3"],
             _all(r"trajectory\.kl_samples: got 0", r"trajectory\.confidence: got 1\.5",
                  r"trajectory\.saturation_margin: got -3"),
             "a KL needs samples; intervals need a confidence in (0, 1); the saturation margin is positive"),
    _setting("data-limit-zero", "prepare", ["data.limit=0"],
             r"data\.limit: got 0; allowed: an integer >= 1, or null", "data.limit: null or >= 1"),
    _setting("local-data-file-missing", "prepare", ["data=gsm8k_local", "data.splits.train=/nonexistent/train.jsonl"],
             r"data\.splits\.train: got '/nonexistent/train\.jsonl'; allowed: an existing JSONL file",
             "a local data file the stage reads must exist before it starts"),
    _setting("sampling-temperature-negative", "sample", ["sampling.temperature=-1"],
             r"sampling\.temperature: got -1; allowed: a number >= 0", "temperature >= 0"),
    _setting("sampling-top-p-zero", "sample", ["sampling.top_p=0"], r"sampling\.top_p: got 0; allowed: a number > 0 "
             "and <= 1", "top_p in (0, 1]"),
    _setting("generation-settings-out-of-range", "sample",
             ["sampling.n=0", "sampling.split=dev", "generation=vllm", "generation.tensor_parallel_size=0",
              "+data.splits.validation=dev", "eval.limit=0", "eval.stop=[1]"],
             _all(r"sampling\.n: got 0", r"sampling\.split: got 'dev'; allowed: one of train, test",
                  r"generation\.tensor_parallel_size: got 0; allowed: one of auto, or an integer >= 1",
                  r"data\.splits: got split\(s\) validation", r"eval\.limit: got 0", r"eval\.stop: got \[1\]"),
             "n >= 1, the prepared splits (train, test), tensor parallelism auto or >= 1, stop strings"),
    _setting("eval-more-shots-than-exemplars", "eval", ["eval.num_shots=9"],
             r"eval\.num_shots: got 9; allowed: 0 to 8 \(the gsm8k exemplars\)", "at most the standard exemplars"),
    _setting("pairs-per-question-zero", "pairs", ["pairing.pairs_per_question=0"],
             r"pairing\.pairs_per_question: got 0", "at least one pair per question"),
    _setting("criticality-lr-zero", "weights", ["criticality.sft.lr=0"], r"criticality\.sft\.lr: got 0",
             "the adapters' learning rate > 0"),
    _setting("sft-heads-do-not-divide", "sft", ["sft.num_heads=3"],
             r"sft\.num_heads: got 3; allowed: a divisor of sft\.hidden_size \(128\)",
             "attention heads split the width"),
    _setting("aggregate-confidence-percent", "aggregate", ["aggregate.confidence=95"],
             r"aggregate\.confidence: got 95; allowed: a number > 0 and < 1", "confidence is a fraction"),
    _setting("pipeline-settings-out-of-range", "pipeline", ["pipeline.stages=[prepare,evaluate]",
                                                            "pipeline.nproc_per_node=0"],
             _all(r"pipeline\.stages: got \['prepare', 'evaluate'\]", r"pipeline\.nproc_per_node: got 0"),
             "pipeline.stages: the registry's stages; at least one training process"),
    BadInput("pipeline-run-with-a-bad-granularity", _pipeline_run_with_a_bad_granularity,
             r"the pipeline's train step \(.*method\.granularity=static:0\):\n  method\.granularity: got 'static:0'",
             ValueError, "a run of pipeline.runs is checked when the plan is made, before the first stage"),
    BadInput("sweep-with-one-bad-job", _one_bad_job_of_a_sweep,
             r"method\.granularity: got 'adaptive:0'.*\[job 1\]", ValueError,
             "a sweep's jobs are all checked before any is launched; the message names the jobs"),
    BadInput("unknown-keys-and-runtime-interpolations", _unknown_keys_and_runtime_interpolations_pass, None,
             rule="keys the schema does not know are allowed; ${hydra:...} values are left to the job"),
]
