"""The model card beside an exported policy: export.json (what the card is made from: method, data, training config,
final training metrics) and README.md, a Hugging Face model card (YAML metadata: base_model, library_name
peft|transformers, tags, datasets, model-index once evaluated). The eval stage adds its accuracy with
add_eval_results (eval_results.json beside the model, the card rendered again, one eval at a time under a lock).

    python -m adpo.export card <train_dir>/model                     # render README.md again
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from adpo.io import atomic_write_json, atomic_write_text

EXPORT_RECORD = "export.json"
EVAL_RESULTS = "eval_results.json"
CARD = "README.md"
RECORD_FORMAT = 1


# --- the record the card is made from -----------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def last_metrics(metrics_file: Path) -> dict[str, Any]:
    """The last row of a train run's metrics.jsonl without its step, as the loop's own final metrics are (a run
    resumed at its last step has nothing left to train and logs none)."""
    if not metrics_file.is_file():
        return {}
    rows = [line for line in metrics_file.read_text().splitlines() if line.strip()]
    for line in reversed(rows):
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            row.pop("step", None)
            return row
    return {}


# The card's rows in this order, whether the record comes from memory or from export.json (written with sorted keys).
TRAIN_KEYS = ("lr", "epochs", "max_steps", "micro_batch_size", "gradient_accumulation_steps", "warmup_ratio",
              "schedule", "weight_decay", "max_grad_norm", "length_policy", "seed", "gradient_checkpointing",
              "heldout_pairs")
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def export_record(cfg: Mapping[str, Any], kind: str, base_model: str, final_metrics: Mapping[str, Any] | None,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What export.json holds: everything the model card shows, as plain JSON."""
    cfg = _plain(cfg)
    method, tcfg, model, data = cfg.get("method", {}), cfg.get("train", {}), cfg.get("model", {}), cfg.get("data", {})
    return {
        "format": RECORD_FORMAT,
        "export": kind,
        "base_model": base_model,
        "base_model_revision": model.get("revision"),
        "run_name": cfg.get("run_name"),
        "experiment_name": cfg.get("experiment_name"),
        "method": {k: method.get(k) for k in ("name", "label", "granularity", "beta", "segment_loss", "use_weights",
                                               "length_mode", "reduction", "eos_weight") if k in method},
        "model": {k: model.get(k) for k in ("name", "paper_name", "name_or_path", "dtype", "prompt_format",
                                             "max_prompt_length", "max_length") if k in model},
        "data": {"name": data.get("name"), "dataset": data.get("dataset"), "source": data.get("source"),
                 "path": data.get("path"), "pairs": str(Path(str(cfg.get("input_dir", ""))) / "pairs.jsonl")},
        "train": {k: tcfg.get(k) for k in TRAIN_KEYS if k in tcfg},
        "lora": ({k: tcfg["lora"].get(k) for k in LORA_KEYS}
                 if kind != "full" and tcfg.get("lora") else None),
        "deepspeed_zero_stage": (cfg.get("deepspeed", {}).get("zero_optimization") or {}).get("stage"),
        # Speeds are left out: a run resumed after a kill exports the same files as an uninterrupted one.
        "train_metrics": {k: v for k, v in dict(final_metrics or {}).items() if "per_second" not in k},
        **dict(extra or {}),
    }


# --- the model card -----------------------------------------------------------------------------------------------

_HUB_DATASETS = {"gsm8k": "openai/gsm8k", "math": "EleutherAI/hendrycks_math"}
_TRAIN_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/saturated", "rewards/chosen",
                  "rewards/rejected", "logps/chosen", "logps/rejected", "segments/win_fraction", "segments/per_pair",
                  "segments/saturated", "grad_norm", "learning_rate", "epoch")


def _looks_like_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(str(name)).is_absolute() and bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(name)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "-" if value is None else str(value)


def render_card(record: Mapping[str, Any], eval_results: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The model card (README.md: YAML metadata + Markdown) of an exported policy."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    method, data, train, lora = record["method"], record["data"], record["train"], record.get("lora")
    kind = record["export"]
    method_name = str(method.get("name") or "dpo")
    label = method.get("label") or method_name.upper()
    dataset_id = data.get("path") if data.get("source") == "hub" else _HUB_DATASETS.get(str(data.get("dataset")))
    tags = ["adpo", "dpo", method_name, f"granularity-{re.sub(r'[^a-z0-9]+', '-', str(method.get('granularity')))}",
            "preference-optimization", "math-reasoning"]
    if kind == "adapter":
        tags += ["lora", "peft"]
    tags = list(dict.fromkeys(tags))
    model_name = f"{record.get('model', {}).get('name') or 'policy'}-{record.get('run_name') or method_name}"
    results = []
    for run_dir, m in sorted((eval_results or {}).items()):
        name = str(m.get("dataset") or data.get("dataset") or "eval")
        results.append(EvalResult(task_type="text-generation", task_name="Math word problems",
                                  dataset_type=_HUB_DATASETS.get(name, name), dataset_name=name.upper(),
                                  dataset_split=m.get("split"), metric_type="accuracy", metric_name="Accuracy",
                                  metric_value=round(float(m["accuracy"]), 6),
                                  metric_config=f"{m.get('num_shots')}-shot {m.get('prompt_style') or ''}".strip()))
    # The hub takes base_model as a hub id: a run from a local copy names its path in the text and adapter_config.
    card_data = ModelCardData(
        base_model=record["base_model"] if _looks_like_hub_id(record["base_model"]) else None,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-generation", tags=tags, datasets=[dataset_id] if dataset_id else None,
        model_name=model_name if results else None, eval_results=results or None,
    )
    base = record["base_model"]
    lines = [f"# {model_name}", "",
             f"{label} ({method_name}, granularity `{method.get('granularity')}`) policy trained from `{base}`"
             + (f" (revision `{record['base_model_revision']}`)" if record.get("base_model_revision") else "")
             + " with the ADPO reproduction pipeline (Autoregressive Direct Preference Optimization).", ""]
    if kind == "adapter":
        lines += ["This directory holds the **LoRA adapter only** (PEFT format): load it on top of the base model.",
                  ""]
        if not _looks_like_hub_id(base):
            lines += [f"The base model is a local directory, `{base}` (adapter_config.json's "
                      "base_model_name_or_path): load the adapter where that path exists, or point "
                      "base_model_name_or_path at another copy of the same weights.", ""]
    elif kind == "merged":
        lines += ["Full weights: the LoRA adapter merged into the base model.", ""]
    else:
        lines += ["Full weights (full fine-tuning).", ""]
    lines += ["## Method", "", "| | |", "| --- | --- |"]
    for key in ("name", "granularity", "beta", "segment_loss", "use_weights", "length_mode", "reduction",
                "eos_weight"):
        if key in method:
            lines.append(f"| {key} | {_fmt(method[key])} |")
    lines += ["", "## Data", "", "| | |", "| --- | --- |",
              f"| dataset | {_fmt(data.get('dataset'))} ({_fmt(dataset_id or data.get('path'))}) |",
              f"| preference pairs | `{data.get('pairs')}` |"]
    for key in ("pairs", "pairs_dropped_over_length", "pairs_held_out", "steps"):
        if record.get(key) is not None:
            lines.append(f"| {key.replace('_', ' ')} | {_fmt(record[key])} |")
    lines += ["", "## Training", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(train[k])} |" for k in TRAIN_KEYS if k in train]
    if lora:
        lines += [f"| lora.{k} | {_fmt(lora[k])} |" for k in LORA_KEYS if k in lora]
    if record.get("deepspeed_zero_stage") is not None:
        lines.append(f"| DeepSpeed ZeRO stage | {record['deepspeed_zero_stage']} |")
    lines += [f"| export | {kind} |", ""]
    metrics = record.get("train_metrics") or {}
    if metrics:
        lines += ["## Final training metrics", "", "Averaged over the last logging window.", "", "| metric | value |",
                  "| --- | --- |"]
        names = [k for k in _TRAIN_METRICS if k in metrics] + sorted(k for k in metrics if k.startswith("eval/"))
        lines += [f"| {k} | {_fmt(metrics[k])} |" for k in names] + [""]
    lines += ["## Evaluation", ""]
    if eval_results:
        lines += ["| dataset | split | shots | accuracy | correct / total | eval directory |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for run_dir, m in sorted(eval_results.items()):
            lines.append(f"| {_fmt(m.get('dataset'))} | {_fmt(m.get('split'))} | {_fmt(m.get('num_shots'))} | "
                         f"{float(m['accuracy']):.4f} | {m.get('correct')} / {m.get('total')} | `{run_dir}` |")
        lines.append("")
    else:
        lines += ["Not evaluated yet (the eval stage adds its accuracy here).", ""]
    lines += ["## Use", "", "```python"]
    if kind == "adapter":
        lines += ["from peft import AutoPeftModelForCausalLM",
                  "from transformers import AutoTokenizer", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("<this directory or repo>")  # base + adapter',
                  'tokenizer = AutoTokenizer.from_pretrained("<this directory or repo>")',
                  "model = model.merge_and_unload()  # optional: plain transformers weights", "```", "",
                  f"With vLLM: `LLM(model=\"{base}\", enable_lora=True, max_lora_rank={_vllm_rank(lora)})`"
                  " and `LoRARequest(\"policy\", 1, \"<this directory>\")` on each request. In this pipeline, "
                  "`adpo-eval model_dir=<this directory>` does either, for both backends."]
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("<this directory or repo>")',
                  'tokenizer = AutoTokenizer.from_pretrained("<this directory or repo>")', "```"]
    lines.append("")
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def _vllm_rank(lora: Mapping[str, Any] | None) -> int:
    from adpo.generation.vllm_backend import max_lora_rank

    return max_lora_rank(int(lora["r"])) if lora else 16


def read_record(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / EXPORT_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_card(model_dir: str | Path) -> Path:
    """Render README.md from export.json and eval_results.json (atomically)."""
    model_dir = Path(model_dir)
    record = read_record(model_dir)
    if record is None:
        raise FileNotFoundError(f"{model_dir / EXPORT_RECORD}: not a directory exported by the train stage")
    results_file = model_dir / EVAL_RESULTS
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    return atomic_write_text(model_dir / CARD, render_card(record, results))


@contextlib.contextmanager
def _card_lock(model_dir: Path) -> Iterator[None]:
    """Evaluations of one model on several datasets may finish at once: one read-modify-write at a time."""
    import fcntl

    with open(model_dir / ".card.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


EVAL_KEYS = ("accuracy", "correct", "total", "dataset", "split", "num_shots", "prompt_style", "max_new_tokens",
             "no_answer", "truncated", "generated_with")


def add_eval_results(model_dir: str | Path, eval_dir: str | Path, metrics: Mapping[str, Any]) -> Path | None:
    """Record an eval stage's metrics beside an exported model (eval_results.json, keyed by the eval directory) and
    render its card again; None (nothing written) for a model this pipeline did not export (a hub id, a base
    model). The model directory's identity for later stages is its train manifest, which this does not touch."""
    model_dir = Path(str(model_dir))
    if not (model_dir / EXPORT_RECORD).is_file():
        return None
    with _card_lock(model_dir):
        results_file = model_dir / EVAL_RESULTS
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        results[str(Path(eval_dir).resolve())] = {k: metrics.get(k) for k in EVAL_KEYS}
        atomic_write_json(results_file, results)
        return write_card(model_dir)
