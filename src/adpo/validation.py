"""Every setting a stage reads, checked for type and range when its config is composed, before any work starts.

SCHEMA is the one declaration: dotted key -> rule (what values are allowed, in words and as a test). A key is
checked when the composed config has it (an experiment may set a part of a stage's section, `sft:` say, in every
stage's config; a stage that reads a key it lacks fails on its own, naming it) and never required; keys SCHEMA does
not name are allowed (configs grow). RELATIONS are checks across keys (max_prompt_length < max_length, ...), and
READS_FILES the files a stage reads that must exist before it starts (local data files, only for the stages that
read them). Values are checked resolved: a reference to a key that does not exist is reported; a value that only
resolves where the job runs (`${hydra:...}`, an environment variable the launcher sets) is skipped.

Callers: adpo.stage_guard (every stage and the pipeline, on its composed config), adpo.pipeline.plan (each step's
config, so a bad run fails the plan before the first stage), and the Hydra launchers in hydra_plugins.adpo_slurm
(every job of a sweep, the dry run included, before anything is submitted). One ConfigError lists every bad key as
`key: got X; allowed: ...`.

Choices that the code defines in modules too heavy to import here (torch, DeepSpeed) are repeated below;
tests/test_validation.py checks that they are the code's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError, MissingMandatoryValue

from adpo.data.loaders import REPO_ROOT, SOURCES, SPLIT_KEYS, resolve_local_path, split_spec
from adpo.data.prompts import PROMPT_FORMATS, PROMPT_STYLES, exemplars
from adpo.data.records import DATASETS
from adpo.registry import STAGES, stage_names

# Repeated from the modules that read them (tests/test_validation.py compares): adpo.losses, adpo.training.engine,
# adpo.data.tokenize, adpo.export, adpo.generation, adpo.models, adpo_data_prep.sample / prepare, adpo_eval.first_error.
SEGMENT_LOSSES = ("sigmoid",)
LENGTH_MODES = ("max", "min")
REDUCTIONS = ("sum", "mean", "grid")
LR_SCHEDULES = ("cosine", "linear")
LENGTH_POLICIES = ("truncate", "drop")
EXPORTS = ("adapter", "merged")
BACKENDS = ("vllm", "hf")
DTYPES = ("auto", "float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half")
PROMPT_IN_ROWS = ("all", "first")
SPLITS = ("train", "test")
GRANULARITY = "sequence, token, static:K or adaptive:M (K, M integers >= 1)"
WANDB_MODES = ("online", "offline", "disabled")
FIRST_ERROR_LOCATORS = ("toy", "arithmetic", "none")


class ConfigError(CompactHydraException, ValueError):
    """Settings of the wrong type or out of range, every one named. A CompactHydraException, so that a Hydra app
    prints the message alone (no traceback) and exits 1; a ValueError for everyone else."""

    def __init__(self, problems: Sequence[str], where: str = "") -> None:
        self.problems = list(problems)
        head = f"{len(self.problems)} invalid setting{'s' if len(self.problems) != 1 else ''}"
        super().__init__("\n".join([f"{head}{' in ' + where if where else ''}:",
                                    *(f"  {p}" for p in self.problems)]))


# ---------------------------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    allowed: str  # in words, for the message
    test: Callable[[Any], bool]
    numeric: bool = False  # a string given for it is said to be one ("got '1e-5' (a string)")

    def __or__(self, other: Rule) -> Rule:
        return Rule(f"{self.allowed}, or {other.allowed}", lambda v: self.test(v) or other.test(v),
                    self.numeric or other.numeric)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # nan, inf: no setting


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> tuple[str, Callable]:
    parts, tests = [], []
    for op, bound, test in ((">=", ge, lambda v, b: v >= b), (">", gt, lambda v, b: v > b),
                            ("<=", le, lambda v, b: v <= b), ("<", lt, lambda v, b: v < b)):
        if bound is not None:
            parts.append(f"{op} {bound:g}")
            tests.append(lambda v, b=bound, t=test: t(v, b))
    return " and ".join(parts), lambda v: all(t(v) for t in tests)


def number(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Rule:
    words, within = _bounds(ge, gt, le, lt)
    return Rule(f"a number {words}".rstrip(), lambda v: _is_number(v) and within(v), numeric=True)


def integer(*, ge: int | None = None, le: int | None = None) -> Rule:
    words, within = _bounds(ge, None, le, None)
    return Rule(f"an integer {words}".rstrip(), lambda v: _is_int(v) and within(v), numeric=True)


def choice(*values: str) -> Rule:
    return Rule("one of " + ", ".join(values), lambda v: isinstance(v, str) and v in values)


NULL = Rule("null", lambda v: v is None)
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
TEXT = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
STRING = Rule("a string", lambda v: isinstance(v, str))
MAPPING = Rule("a mapping", lambda v: isinstance(v, Mapping))
TEXTS = Rule("a list of non-empty strings",
             lambda v: isinstance(v, list) and all(isinstance(s, str) and s.strip() for s in v))
SEED = integer(ge=0)
POSITIVE = integer(ge=1)
COUNT = integer(ge=0)
PROBABILITY = number(ge=0, le=1)


def parses_as_granularity(value: Any) -> bool:
    """adpo.segments.parse_granularity's grammar (that module needs torch): sequence | token | static:K |
    adaptive:M with K, M >= 1, case and surrounding blanks ignored."""
    if not isinstance(value, str):
        return False
    text = value.strip().lower()
    if text in ("sequence", "token"):
        return True
    kind, sep, size = text.partition(":")
    return kind in ("static", "adaptive") and bool(sep) and size.isdigit() and int(size) >= 1


def _eos_weight(v: Any) -> bool:
    return v is None or v == "longest" or (_is_number(v) and 0 <= v <= 1)


def _split_entry(v: Any) -> bool:
    """A data split: a hub split name or a JSONL file, a problem count (source toy), a mapping of SPLIT_KEYS, null."""
    if v is None or (isinstance(v, str) and v.strip()) or (_is_int(v) and v >= 1):
        return True
    return (isinstance(v, Mapping) and set(v) <= set(SPLIT_KEYS) and v.get("source") in (None, *SOURCES)
            and (v.get("limit") is None or (_is_int(v["limit"]) and v["limit"] >= 1)))


def _pipeline_run(v: Any) -> bool:
    return v is None or isinstance(v, (str, Mapping)) or (isinstance(v, list) and all(isinstance(o, str) for o in v))


GRANULARITY_RULE = Rule(GRANULARITY, parses_as_granularity)
DEVICE = TEXT  # "auto", "cpu", "cuda", "cuda:1": torch decides
GROUP_BY = choice("auto") | TEXTS | NULL

SCHEMA: dict[str, Rule] = {
    # top level (conf/config.yaml and the stages' primary configs)
    "seed": SEED,
    "experiment_name": TEXT,
    "run_name": TEXT,
    "run_tag": STRING,
    "progress": BOOL,
    "progress_every": number(ge=0) | NULL,
    "input_dir": TEXT | NULL,
    "output_dir": TEXT,
    "model_dir": TEXT,
    "data_dir": TEXT | NULL,
    "samples_dir": TEXT,
    # model/
    "model.name": TEXT,
    "model.name_or_path": TEXT,
    "model.dtype": choice(*DTYPES),
    "model.prompt_format": choice(*PROMPT_FORMATS),
    "model.prompt_trailing_space": BOOL,
    "model.trust_remote_code": BOOL,
    "model.max_prompt_length": POSITIVE | NULL,
    "model.max_length": POSITIVE | NULL,
    # data/
    "data.dataset": choice(*DATASETS),
    "data.name": TEXT,
    "data.source": choice(*SOURCES),
    "data.path": TEXT | NULL,
    "data.config": TEXT | TEXTS | NULL,
    "data.splits": MAPPING,
    "data.splits.*": Rule("a split name or JSONL file, a problem count >= 1 (source toy), a mapping of "
                          f"{', '.join(SPLIT_KEYS)} (limit an integer >= 1 or null), or null", _split_entry),
    "data.limit": POSITIVE | NULL,
    "data.generator": TEXT,
    "data.seed": SEED,
    "data.min_steps": POSITIVE,
    "data.max_steps": POSITIVE,
    # method/
    "method.name": TEXT,
    "method.beta": number(gt=0),
    "method.granularity": GRANULARITY_RULE,
    "method.segment_loss": choice(*SEGMENT_LOSSES),
    "method.use_weights": BOOL,
    "method.length_mode": choice(*LENGTH_MODES),
    "method.reduction": choice(*REDUCTIONS),
    "method.pairs_dir": TEXT,
    "method.eos_weight": Rule("null, a number in [0, 1] or longest", _eos_weight, numeric=True),
    "method.schedule": choice(*LR_SCHEDULES),
    "method.length_policy": choice(*LENGTH_POLICIES),
    "method.main_granularity": GRANULARITY_RULE,
    "method.order": number(),
    # train/
    "train.micro_batch_size": POSITIVE,
    "train.gradient_accumulation_steps": POSITIVE,
    "train.epochs": POSITIVE,
    "train.max_steps": POSITIVE | NULL,
    "train.lr": number(gt=0),
    "train.warmup_ratio": PROBABILITY,
    "train.schedule": choice(*LR_SCHEDULES),
    "train.length_policy": choice(*LENGTH_POLICIES),
    "train.weight_decay": number(ge=0),
    "train.max_grad_norm": number(ge=0) | NULL,
    "train.adam_betas": Rule("a list of two numbers in [0, 1)", lambda v: isinstance(v, list) and len(v) == 2 and all(
        _is_number(b) and 0 <= b < 1 for b in v), numeric=True),
    "train.adam_eps": number(gt=0),
    "train.fused_optimizer": BOOL,
    "train.seed": SEED,
    "train.save_every": COUNT | NULL,
    "train.keep_checkpoints": COUNT,
    "train.resume": BOOL,
    "train.log_every": POSITIVE | NULL,
    "train.heldout_pairs": COUNT | NULL,
    "train.eval_every": POSITIVE | NULL,
    "train.snapshot_every": POSITIVE | NULL,
    "train.snapshot_at": Rule("a list of steps (integers >= 1)", lambda v: isinstance(v, list) and all(
        _is_int(s) and s >= 1 for s in v)) | NULL,
    "train.gradient_checkpointing": BOOL,
    "train.logps_chunk_size": POSITIVE | NULL,
    "train.reference_model": TEXT | NULL,
    "train.reference_batch_size": POSITIVE,
    "train.reference_cache_dir": TEXT | NULL,
    "train.lora.enabled": BOOL,
    "train.lora.r": POSITIVE,
    "train.lora.alpha": number(gt=0),
    "train.lora.dropout": number(ge=0, lt=1),
    "train.lora.target_modules": TEXTS | TEXT,
    "train.export": choice(*EXPORTS),
    "train.push_to_hub": BOOL,
    "train.hub_model_id": TEXT | NULL,
    "train.hub_private": BOOL,
    # deepspeed/
    "deepspeed.zero_optimization.stage": integer(ge=0, le=3),
    "deepspeed.bf16.enabled": BOOL | choice("auto"),
    # generation/
    "generation.backend": choice(*BACKENDS),
    "generation.dtype": choice(*DTYPES) | NULL,
    "generation.batch_size": POSITIVE,
    "generation.max_model_len": POSITIVE | NULL,
    "generation.device": DEVICE | NULL,
    "generation.threads": POSITIVE | NULL,
    "generation.trust_remote_code": BOOL,
    "generation.prompt_format": choice(*PROMPT_FORMATS),
    "generation.tensor_parallel_size": choice("auto") | POSITIVE,
    "generation.gpu_memory_utilization": number(gt=0, le=1) | NULL,
    "generation.enforce_eager": BOOL,
    "generation.max_num_seqs": POSITIVE | NULL,
    "generation.engine_seed": SEED | NULL,
    "generation.multiprocessing": BOOL | NULL,
    "generation.cpu_kvcache_space_gib": number(gt=0) | NULL,
    "generation.cpu_fallback": choice("hf") | NULL,
    "generation.engine_kwargs": MAPPING | NULL,
    # sampling/
    "sampling.n": POSITIVE,
    "sampling.temperature": number(ge=0),
    "sampling.top_p": number(gt=0, le=1),
    "sampling.max_tokens": POSITIVE,
    "sampling.prompt_style": choice(*PROMPT_STYLES),
    "sampling.num_shots": COUNT | NULL,
    "sampling.split": choice(*SPLITS),
    "sampling.max_problems": POSITIVE | NULL,
    "sampling.shard_size": POSITIVE,
    "sampling.seed": SEED,
    "sampling.grade_workers": COUNT,
    "sampling.grade_timeout_s": number(gt=0),
    "sampling.prompt_in_rows": choice(*PROMPT_IN_ROWS),
    # eval/
    "eval.split": choice(*SPLITS),
    "eval.limit": POSITIVE | NULL,
    "eval.prompt_style": choice(*PROMPT_STYLES),
    "eval.num_shots": COUNT | NULL,
    "eval.max_new_tokens": POSITIVE,
    "eval.temperature": number(ge=0),
    "eval.top_p": number(gt=0, le=1),
    "eval.seed": SEED,
    "eval.stop": TEXTS | NULL,
    "eval.shard_size": POSITIVE,
    "eval.grade_workers": COUNT,
    "eval.grade_timeout_s": number(gt=0),
    "eval.wandb_table": BOOL,
    # pairs.yaml
    "pairing.pairs_per_question": POSITIVE,
    "pairing.seed": SEED,
    "pairing.drop_truncated": BOOL,
    # weights.yaml
    "criticality.seed": SEED,
    "criticality.lam": number(),
    "criticality.weight_chosen": BOOL,
    "criticality.lora.r": POSITIVE,
    "criticality.lora.alpha": number(gt=0),
    "criticality.lora.dropout": number(ge=0, lt=1),
    "criticality.lora.target_modules": TEXTS | TEXT,
    "criticality.sft.lr": number(gt=0),
    "criticality.sft.epochs": POSITIVE,
    "criticality.sft.batch_size": POSITIVE,
    "criticality.sft.grad_accum": POSITIVE,
    "criticality.sft.warmup_ratio": PROBABILITY,
    "criticality.sft.weight_decay": number(ge=0),
    "criticality.sft.max_grad_norm": number(ge=0) | NULL,
    "criticality.max_examples": POSITIVE | NULL,
    "criticality.negative_include_no_answer": BOOL,
    "criticality.gradient_checkpointing": BOOL,
    "criticality.save_every": COUNT,
    "criticality.score_batch_size": POSITIVE,
    "criticality.logps_chunk_size": POSITIVE | NULL,
    "criticality.decimals": COUNT,
    "criticality.device": DEVICE,
    # sft.yaml
    "sft.seed": SEED,
    "sft.vocab_size": POSITIVE,
    "sft.hidden_size": POSITIVE,
    "sft.num_layers": POSITIVE,
    "sft.num_heads": POSITIVE,
    "sft.intermediate_size": POSITIVE,
    "sft.max_length": POSITIVE,
    "sft.steps": POSITIVE,
    "sft.batch_size": POSITIVE,
    "sft.lr": number(gt=0),
    "sft.min_lr_ratio": PROBABILITY,
    "sft.warmup_steps": COUNT,
    "sft.weight_decay": number(ge=0),
    "sft.grad_clip": number(gt=0),
    "sft.logps_chunk_size": POSITIVE | NULL,
    "sft.checkpoint_every": COUNT,
    "sft.log_every": POSITIVE,
    "sft.eval_problems": COUNT,
    "sft.eval_max_new_tokens": POSITIVE,
    "sft.num_threads": POSITIVE | NULL,
    # aggregate.yaml
    "aggregate.extra_inputs": TEXTS | NULL,
    "aggregate.paper_tables": TEXT | NULL,
    "aggregate.group_by": GROUP_BY,
    "aggregate.confidence": number(gt=0, lt=1),
    "aggregate.bootstrap_resamples": POSITIVE,
    "aggregate.bootstrap_seed": SEED,
    "aggregate.plot": BOOL,
    "aggregate.print_tables": BOOL,
    # analyze.yaml
    "analyze.pairs_file": TEXT | NULL,
    "analyze.reference_model": TEXT | NULL,
    "analyze.max_pairs": POSITIVE | NULL,
    "analyze.sample_seed": SEED,
    "analyze.first_error": choice("auto", *FIRST_ERROR_LOCATORS),
    "analyze.window.before": COUNT,
    "analyze.window.after": COUNT,
    "analyze.batch_size": POSITIVE,
    "analyze.device": DEVICE,
    "analyze.dtype": choice(*DTYPES) | NULL,
    "analyze.confidence": number(gt=0, lt=1),
    "analyze.bootstrap_resamples": POSITIVE,
    "analyze.bootstrap_seed": SEED,
    "analyze.plot": BOOL,
    # trajectory.yaml
    "trajectory.problems": POSITIVE,
    "trajectory.kl_prompts": POSITIVE,
    "trajectory.kl_samples": POSITIVE,
    "trajectory.kl_seed": SEED,
    "trajectory.batch_size": POSITIVE,
    "trajectory.points_dir": TEXT | NULL,
    "trajectory.device": DEVICE,
    "trajectory.dtype": choice(*DTYPES) | NULL,
    "trajectory.baseline": TEXT,
    "trajectory.kl_grid": Rule("a list of KL values > 0", lambda v: isinstance(v, list) and all(
        _is_number(k) and k > 0 for k in v)) | NULL,
    "trajectory.kl_grid_points": POSITIVE,
    "trajectory.saturation_margin": number(gt=0),
    "trajectory.confidence": number(gt=0, lt=1),
    "trajectory.plot": BOOL,
    # pipeline.yaml
    "pipeline.runs": Rule("a list of runs (each a list of overrides, a mapping or null)",
                          lambda v: isinstance(v, list) and all(_pipeline_run(r) for r in v)),
    "pipeline.sweep": MAPPING | NULL,
    "pipeline.base_eval": BOOL,
    "pipeline.sft": choice("auto") | BOOL,
    "pipeline.weights": choice("auto") | BOOL,
    "pipeline.trajectory": choice("auto") | BOOL,
    "pipeline.data_keys": TEXTS | NULL,
    "pipeline.stages": Rule("a list of stages among " + ", ".join(stage_names()),
                            lambda v: isinstance(v, list) and all(s in stage_names() for s in v)),
    "pipeline.nproc_per_node": POSITIVE,
    "pipeline.python": TEXT | NULL,
    "pipeline.env": MAPPING | NULL,
    "pipeline.stream_logs": BOOL,
    "pipeline.progress_every": number(ge=0) | NULL,
    "pipeline.tail_on_failure": COUNT,
    "pipeline.dry_run": BOOL,
    "pipeline.print_tables": BOOL,
    # experiment=paper's table
    "paper_setup.gpus_per_node": POSITIVE,
    # wandb/
    "wandb.enabled": BOOL,
    "wandb.mode": choice(*WANDB_MODES),
    "wandb.project": TEXT,
    "wandb.entity": TEXT | NULL,
    "wandb.group": TEXT | NULL,
    "wandb.tags": TEXTS | NULL,
    "wandb.dir": TEXT,
    "wandb.fallback_offline": BOOL,
}


# ---------------------------------------------------------------------------------------------- across keys

Values = Callable[[str], Any]  # a key's resolved value (None when absent or not checkable)


def _shots(section: str) -> Callable[[Values], list[str]]:
    def check(get: Values) -> list[str]:
        shots, dataset = get(f"{section}.num_shots"), get("data.dataset")
        if _is_int(shots) and dataset in DATASETS and shots > len(exemplars(dataset)):
            return [f"{section}.num_shots: got {shots}; allowed: 0 to {len(exemplars(dataset))} "
                    f"(the {dataset} exemplars), or null"]
        return []
    return check


def _lengths(get: Values) -> list[str]:
    prompt, total = get("model.max_prompt_length"), get("model.max_length")
    if _is_int(prompt) and _is_int(total) and prompt >= total:
        return [f"model.max_prompt_length: got {prompt}; allowed: less than model.max_length ({total})"]
    return []


def _grid(get: Values) -> list[str]:
    granularity = get("method.granularity")
    if get("method.reduction") == "grid" and parses_as_granularity(granularity) and \
            granularity.strip().lower() not in ("token", "static:1"):
        return [f"method.reduction: got 'grid' with method.granularity={granularity!r}; allowed: grid only with "
                "token granularity (or sum, mean)"]
    return []


def _toy_steps(get: Values) -> list[str]:
    low, high = get("data.min_steps"), get("data.max_steps")
    if _is_int(low) and _is_int(high) and low > high:
        return [f"data.min_steps: got {low}; allowed: at most data.max_steps ({high})"]
    return []


def _split_names(get: Values) -> list[str]:
    splits = get("data.splits")
    if isinstance(splits, Mapping):
        unknown = [str(s) for s in splits if s not in SPLITS]
        if unknown:
            return [f"data.splits: got split(s) {', '.join(unknown)}; allowed: {', '.join(SPLITS)}"]
    return []


def _toy_source(get: Values) -> list[str]:
    if get("data.source") != "toy":
        return []
    problems = []
    if not get("data.generator"):
        problems.append("data.generator: got null; allowed: a function path (source toy), e.g. "
                        "adpo_data_prep.toy.task.load_toy_problems")
    splits = get("data.splits")
    if isinstance(splits, Mapping):
        problems += [f"data.splits.{s}: got {v!r}; allowed: a problem count >= 1 (source toy)"
                     for s, v in splits.items() if v is not None and not (_is_int(v) and v >= 1)]
    return problems


def _heads(get: Values) -> list[str]:
    hidden, heads = get("sft.hidden_size"), get("sft.num_heads")
    if _is_int(hidden) and _is_int(heads) and heads >= 1 and hidden % heads:
        return [f"sft.num_heads: got {heads}; allowed: a divisor of sft.hidden_size ({hidden})"]
    return []


RELATIONS: tuple[Callable[[Values], list[str]], ...] = (
    _shots("sampling"), _shots("eval"), _lengths, _grid, _toy_steps, _split_names, _toy_source, _heads,
)


# ---------------------------------------------------------------------------------------------- files read

def _local_split_files(splits: Callable[[Values], Iterable[str]]) -> Callable[[Values, DictConfig], list[str]]:
    """The local JSONL files (source local) of these splits must exist (data files read by the stage itself)."""
    def check(get: Values, cfg: DictConfig) -> list[str]:
        data = get("data")
        if not isinstance(data, Mapping) or data.get("source") == "toy":
            return []
        problems = []
        for split in splits(get):
            entry = (data.get("splits") or {}).get(split)
            if entry is None:
                continue
            try:
                spec = split_spec(data, split)
            except (ValueError, TypeError):  # a malformed split: SCHEMA reports it
                continue
            if spec["source"] == "local" and isinstance(spec["path"], str):
                path = resolve_local_path(spec["path"])
                if not path.is_file():
                    key = f"data.splits.{split}" + (".path" if isinstance(entry, Mapping) and "path" in entry else "")
                    looked = path if path.is_absolute() else f"{Path.cwd()} or {REPO_ROOT}"
                    problems.append(f"{key}: got {spec['path']!r}; allowed: an existing JSONL file (not found in "
                                    f"{looked})")
        return problems
    return check


def _eval_split_without_data_dir(get: Values) -> list[str]:
    return [str(get("eval.split") or "test")] if get("data_dir") is None else []


READS_FILES: dict[str, tuple[Callable[[Values, DictConfig], list[str]], ...]] = {
    "prepare": (_local_split_files(lambda get: SPLITS),),
    "eval": (_local_split_files(_eval_split_without_data_dir),),  # data_dir=null reads cfg.data itself
}


# ---------------------------------------------------------------------------------------------- checking

_ABSENT = object()
_UNCHECKABLE = object()


def _value(cfg: DictConfig, key: str) -> tuple[Any, str | None]:
    """(the resolved value at `key`, or _ABSENT / _UNCHECKABLE; why it cannot be resolved when that is a mistake)."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except MissingMandatoryValue:
        return _UNCHECKABLE, "??? (no value)"
    except InterpolationKeyError as e:
        return _UNCHECKABLE, f"{_raw(cfg, key)!r}, which does not resolve ({e.msg.splitlines()[0]})"
    except InterpolationResolutionError:
        # ${hydra:...} outside a Hydra job, an environment variable set where the job runs: the job resolves it.
        return _UNCHECKABLE, None
    return value, None


def _raw(cfg: DictConfig, key: str) -> Any:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
    try:
        return node._get_node(leaf)._value() if isinstance(node, DictConfig) else None
    except Exception:
        return None


def _shown(value: Any, rule: Rule) -> str:
    return f"{value!r} (a string)" if isinstance(value, str) and rule.numeric else repr(value)


def problems_of(cfg: DictConfig, config_name: str) -> list[str]:
    """Every problem with cfg's settings (empty when it is fine), as `key: got X; allowed: ...` lines."""
    found: dict[str, str] = {}
    values: dict[str, Any] = {}

    def check(key: str, rule: Rule) -> None:
        value, unresolved = _value(cfg, key)
        if unresolved:
            found[key] = f"{key}: got {unresolved}; allowed: {rule.allowed}"
        if value is _ABSENT or value is _UNCHECKABLE:
            return
        values[key] = value
        if not rule.test(value):
            found[key] = f"{key}: got {_shown(value, rule)}; allowed: {rule.allowed}"

    for key, rule in SCHEMA.items():
        if key.endswith(".*"):
            parent, _ = _value(cfg, key[:-2])
            for child in parent if isinstance(parent, Mapping) else ():
                check(f"{key[:-2]}.{child}", rule)
        else:
            check(key, rule)
    # A key that only copies another (train.seed: ${seed}) is wrong because that one is: name the one to change.
    problems = [message for key, message in found.items() if _copied_from(cfg, key) not in found]

    def get(key: str) -> Any:
        if key not in values:
            value, _ = _value(cfg, key)
            values[key] = None if value is _ABSENT or value is _UNCHECKABLE else value
        return values[key]

    for relation in RELATIONS:
        problems += relation(get)
    for reads in READS_FILES.get(config_name, ()):
        problems += reads(get, cfg)
    return list(dict.fromkeys(problems))


_COPY = re.compile(r"\$\{(?:oc\.select:)?([\w.]+)(?:,[^}]*)?\}")


def _copied_from(cfg: DictConfig, key: str) -> str | None:
    """The key whose value this one is (`${seed}`, `${oc.select:method.schedule,cosine}`), or None."""
    raw = _raw(cfg, key)
    match = _COPY.fullmatch(raw) if isinstance(raw, str) else None
    return match.group(1) if match else None


def validate_config(cfg: DictConfig, config_name: str, where: str = "") -> None:
    """Raise ConfigError listing every bad setting of cfg, a config composed from conf/<config_name>.yaml."""
    problems = problems_of(cfg, config_name)
    if problems:
        raise ConfigError(problems, where or f"the {config_name} config")


def config_name_of(stage: str) -> str:
    """The primary config of a stage (the registry's), or the name itself (the pipeline)."""
    return next((s.config for s in STAGES if s.name == stage), stage)


def validate_jobs(stage: str, jobs: Sequence[Any], first_index: int = 0) -> None:
    """Every job of a sweep (adpo.run_dirs.PlannedJob: overrides, config) checked before any is launched; one
    ConfigError naming each bad setting once, with the jobs that have it."""
    from adpo.run_dirs import hydra_config_of

    by_problem: dict[str, list[int]] = {}
    for index, job in enumerate(jobs, start=first_index):
        with hydra_config_of(job.config):
            for problem in problems_of(job.config, config_name_of(stage)):
                by_problem.setdefault(problem, []).append(index)
    if not by_problem:
        return
    everyone = len(jobs) == 1 or all(len(members) == len(jobs) for members in by_problem.values())
    lines = [p if everyone or len(members) == len(jobs) else f"{p}  [job{'s' if len(members) > 1 else ''} "
             f"{_ranges(members)}]" for p, members in by_problem.items()]
    raise ConfigError(lines, f"{stage}'s sweep of {len(jobs)} job{'s' if len(jobs) != 1 else ''} (nothing launched)")


def _ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], numbers[0]
    for previous, current in zip(numbers, [*numbers[1:], None]):
        if current != previous + 1:
            out.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(out)

