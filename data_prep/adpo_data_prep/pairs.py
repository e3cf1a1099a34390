"""Stage 'pairs': graded samples -> pairs.jsonl (cDPO rule, src/adpo/pairing.py) + stats.json.

The prompt of a pair is the zero-shot TRAINING prompt (method.md), whatever prompt the samples were drawn with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adpo.config import stage_main
from adpo.config_diff import check_manifest
from adpo.data.prompts import trailing_space_of
from adpo.data.records import Problem
from adpo.data.tokenize import within_length_limits
from adpo.io import DataError, atomic_write_json, atomic_write_jsonl
from adpo.manifest import identity, is_complete, mark_running, model_identity, read_manifest, write_manifest
from adpo.stage_results import pairability
from adpo.tracking import log_stage_summary
from adpo_data_prep.pairing import PairChoice, Sample, build_pairs, read_samples, sample_files

log = logging.getLogger(__name__)


def samples_inputs(samples_dir: Path) -> list[Path]:
    """What identifies the samples: the sample stage's manifest, or (hand-made samples) every shard's content."""
    if (samples_dir / "manifest.json").is_file():
        return [samples_dir]
    return sample_files(samples_dir)


def check_samples_finished(samples_dir: Path) -> dict | None:
    """The sample stage's manifest; refuses samples from a run that did not finish (pairs would silently miss
    questions). Hand-made samples without a manifest are accepted as they are."""
    manifest = read_manifest(samples_dir)
    if manifest is None:
        log.warning("%s has no manifest.json: using its shards as a finished sample set", samples_dir)
        return None
    if manifest.get("status") != "complete":
        raise DataError(f"{samples_dir}/manifest.json: sampling status is {manifest.get('status')!r}, not "
                        "'complete'; rerun the sample stage (it resumes from its shards)")
    return manifest


def provenance_base(cfg: DictConfig, samples_manifest: dict | None) -> dict[str, Any]:
    """Model, sampling config and seeds the samples came from (their manifest; else this run's config)."""
    source = samples_manifest["config"] if samples_manifest else OmegaConf.to_container(cfg, resolve=True)
    model = source.get("model") or {}
    return {
        "model": model_identity(model["name_or_path"]) if model.get("name_or_path") else None,
        "sampling": source.get("sampling"),
        "sampling_seed": source.get("seed"),
        "pairing_seed": int(cfg.pairing.seed),
        "source": "samples manifest" if samples_manifest else "config (samples had no manifest)",
    }


def training_prompt_builder(cfg: DictConfig):
    """problem -> the zero-shot training prompt, plain or through the tokenizer's chat template."""
    from adpo.data.prompts import build_prompt

    prompt_format = cfg.model.prompt_format
    tokenizer = None
    if prompt_format == "chat":
        from adpo.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.name_or_path,
                                   trust_remote_code=bool(cfg.model.get("trust_remote_code", False)))
    trailing_space = trailing_space_of(cfg.model)
    return lambda problem: build_prompt(problem, style="zero_shot", prompt_format=prompt_format, tokenizer=tokenizer,
                                        trailing_space=trailing_space)


def check_prompt_ending(samples: list[Sample], cfg: DictConfig, samples_dir: Path) -> None:
    """Plain prompts: the samples must have been drawn with prompts of the training prompts' form. Answers sampled
    after "Answer: " start without the space, answers sampled after "Answer:" with it; the other training prompt
    would put a doubled or a missing space at every pair's prompt/response boundary."""
    if cfg.model.prompt_format != "plain":
        return
    trailing_space = trailing_space_of(cfg.model)
    drawn = next((s for s in samples if s.prompt), None)
    if drawn is None or drawn.prompt[-1:].isspace() == trailing_space:
        return
    form = "ending in whitespace" if not trailing_space else 'ending in "Answer:" (no trailing space)'
    raise DataError(f"{samples_dir}: samples were drawn with prompts {form} (problem {drawn.problem_id}: "
                    f"{drawn.prompt[-20:]!r}), but model.prompt_trailing_space={str(trailing_space).lower()} builds "
                    f"training prompts of the other form; set model.prompt_trailing_space="
                    f"{str(not trailing_space).lower()} to pair these samples, or sample again")


def default_dataset(cfg: DictConfig) -> str | None:
    data = cfg.get("data") or {}
    return data.get("dataset") or data.get("name")


def pair_row(pair: PairChoice, prompt: str, provenance: dict[str, Any]) -> dict[str, Any]:
    c, r = pair.chosen, pair.rejected
    return {
        "id": f"{c.problem_id}-{pair.rank}",
        "prompt": prompt,
        "chosen": c.text,
        "rejected": r.text,
        "problem_id": c.problem_id,
        "question": c.question,
        "gold": c.gold,
        "chosen_answer": c.extracted,
        "rejected_answer": r.extracted,
        "rejected_group_size": pair.rejected_group_size,
        "provenance": {**provenance, "chosen_sample_index": c.sample_index, "rejected_sample_index": r.sample_index},
    }


def format_table(summary: dict[str, Any]) -> str:
    width = max(len(k) for k in summary)
    lines = [f"{'statistic':<{width}}  value", f"{'-' * width}  -----"]
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def made_for(config: Any, inputs: Mapping[str, str]) -> dict[str, Any]:
    """What pairs are made for (compared with a manifest's record): the identity and the samples."""
    return {**identity(config, "pairs"), "inputs": dict(inputs)}


def count_over_length(cfg: DictConfig, rows: list[dict[str, Any]]) -> int | None:
    """Pairs over model.max_prompt_length / model.max_length (within_length_limits): what train.length_policy=drop
    leaves out and `truncate` cuts. None when the model's tokenizer is not on this machine (never downloaded here)."""
    from adpo.models import load_tokenizer  # here: the rest of this stage needs no torch

    m = cfg.model
    try:
        tokenizer = load_tokenizer(m.name_or_path, bool(m.get("trust_remote_code", False)), local_files_only=True)
    except (OSError, ValueError) as err:
        log.info("pairs: the tokenizer of %s is not available locally (%s): pairs over the length limits not counted",
                 m.name_or_path, type(err).__name__)
        return None
    limits = dict(prompt_format=str(m.prompt_format), max_prompt_length=m.get("max_prompt_length"),
                  max_length=m.get("max_length"))
    return sum(not within_length_limits(tokenizer, r["prompt"], (r["chosen"], r["rejected"]), **limits) for r in rows)


def run(cfg: DictConfig) -> Path:
    samples_dir, output_dir = Path(cfg.input_dir), Path(cfg.output_dir)
    inputs = samples_inputs(samples_dir)
    if not inputs:
        raise DataError(f"{samples_dir}: no sample shards (shard-*.jsonl); run the sample stage first")
    if is_complete(output_dir, identity(cfg, "pairs"), inputs):
        log.info("pairs: %s is complete for this config and these samples; nothing to do", output_dir)
        return output_dir / "pairs.jsonl"
    # Pairs of other samples or settings are never replaced: training runs and cDPO weights were made from them.
    check_manifest(output_dir, made_for, cfg, inputs, option="paths.pairs", unfinished_is_waste=True)
    samples_manifest = check_samples_finished(samples_dir)

    samples = read_samples(samples_dir)
    check_prompt_ending(samples, cfg, samples_dir)
    pairing = cfg.pairing
    pairs, stats = build_pairs(samples, pairs_per_question=int(pairing.pairs_per_question), seed=int(pairing.seed),
                               drop_truncated=bool(pairing.drop_truncated))

    prompt_of = training_prompt_builder(cfg)
    fallback_dataset = default_dataset(cfg)
    provenance = provenance_base(cfg, samples_manifest)
    rows = []
    for pair in pairs:
        c = pair.chosen
        dataset = c.dataset or fallback_dataset
        if dataset is None:
            raise DataError(f"{samples_dir}: sample rows of problem {c.problem_id!r} have no 'dataset' field and "
                            "the config names none (data.dataset)")
        problem = Problem(id=c.problem_id, dataset=dataset, question=c.question, gold=c.gold)
        rows.append(pair_row(pair, prompt_of(problem), provenance))

    summary = {**stats.summary(), "pairs_over_length_limits": count_over_length(cfg, rows)}
    output_dir.mkdir(parents=True, exist_ok=True)
    mark_running(output_dir, "pairs", cfg, inputs, key=identity(cfg, "pairs"))
    atomic_write_jsonl(output_dir / "pairs.jsonl", rows)
    atomic_write_jsonl(output_dir / "question_stats.jsonl",
                       ({"problem_id": pid, **vars(q)} for pid, q in stats.per_question.items()))
    atomic_write_json(output_dir / "stats.json", {**summary, "provenance": provenance,
                                                  "pairing": OmegaConf.to_container(pairing, resolve=True)})
    print(f"pairs: {len(rows)} pairs from {stats.questions} questions -> {output_dir / 'pairs.jsonl'}")
    print(format_table(summary), flush=True)
    usable, verdict = pairability(summary)
    (log.info if usable else log.warning)("pairs: %s", verdict)
    write_manifest(output_dir, "pairs", cfg, inputs, key=identity(cfg, "pairs"),
                   outputs={"pairs": "pairs.jsonl", "stats": "stats.json", "num_pairs": len(rows),
                            "stats_summary": json.loads(json.dumps(summary))})
    columns = ["problem_id", "gold", "chosen_answer", "rejected_answer", "prompt", "chosen", "rejected"]
    log_stage_summary(cfg, "pairs", {"num_pairs": len(rows), **json.loads(json.dumps(summary))},
                      rows=rows, columns=columns)
    return output_dir / "pairs.jsonl"


main = stage_main("pairs")(run)

if __name__ == "__main__":
    main()
