"""Stage 'weights': pairs + graded samples -> the same pairs with cDPO per-token criticality weights.

1. Fine-tune a positive LoRA adapter on the correct samples and a negative one on the wrong samples (both on the
   zero-shot training prompt, loss on response tokens only), on one copy of the base model.
2. For each pair, p_CE of every response token (adpo_data_prep.criticality), on exactly the tokens of
   adpo.data.tokenize.encode_pair with the model's settings, so the train stage can line weights up with its tokens.
3. pairs.jsonl = input pairs + rejected_weights (1 - p_CE) [+ chosen_weights (p_CE)] + weights_tokenizer.

At scale: criticality.gradient_checkpointing trades compute for activation memory (same values), logps_chunk_size
bounds the logits held at once, score_batch_size the scoring batch. Each adapter is resumable: every
criticality.save_every optimizer steps its training state is checkpointed in output_dir/checkpoints/<adapter>/step-<k>
(atomically, with what the adapter is made for), a rerun of the same command resumes from the newest one (a kill loses
at most one save interval) and gets the adapter an uninterrupted run would, and the checkpoints go once it is saved.

Adapters or weighted pairs made under another config (or from other samples) in output_dir are never replaced: the
stage stops with adpo.config_diff.OutputConflict, naming what differs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adpo.config import stage_main
from adpo.config_diff import check_made_for, check_manifest
from adpo_data_prep.criticality import chosen_weights, rejected_weights, score_responses
from adpo.data.records import Problem
from adpo.data.tokenize import EncodedResponse, encode_pair
from adpo.io import DataError, atomic_write_json, atomic_write_jsonl, file_sha256
from adpo.logprobs import DEFAULT_CHUNK_SIZE
from adpo_data_prep.lora_finetune import (SFTConfig, add_adapter, latest_checkpoint, load_adapter, remove_checkpoints,
                                          save_adapter, saved_adapter_info, train_adapter)
from adpo.manifest import config_hash, identity, is_complete, mark_running, model_identity, write_manifest
from adpo.models import load_causal_lm, load_tokenizer, lora_config, resolve_device, vocabulary_id
from adpo_data_prep.pairing import Sample, read_samples, sample_files
from adpo.progress import progress_every
from adpo_data_prep.pairs import check_samples_finished, default_dataset, samples_inputs, training_prompt_builder
from adpo.tracking import init_wandb
from adpo.training.pairs_data import iter_pair_rows

log = logging.getLogger(__name__)
ADAPTERS = ("positive", "negative")
OUTPUT_OPTION = "paths.weighted_pairs"  # the key that names output_dir, offered when it holds another config's work
CHECKPOINTS = "checkpoints"  # output_dir/checkpoints/<adapter>/step-<k>: an adapter's training, in progress
DEFAULT_SAVE_EVERY = 50


def encoder(cfg: DictConfig, tokenizer):
    m = cfg.model
    return lambda prompt, response: encode_pair(
        tokenizer, prompt, response, prompt_format=m.prompt_format, max_prompt_length=m.get("max_prompt_length"),
        max_length=m.get("max_length"))


class LazyEncoded(Sequence[EncodedResponse]):
    """(prompt, response) pairs encoded when read: a few hundred thousand samples stay strings, not int lists."""

    def __init__(self, items: list[tuple[str, str]], encode) -> None:
        self.items, self.encode = items, encode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.encode(*item) for item in self.items[i]]
        return self.encode(*self.items[i])


def finetune_sets(samples: list[Sample], cfg: DictConfig, encode, seed: int) -> dict[str, LazyEncoded]:
    """Training examples of the positive (correct) and negative (wrong) models, duplicates per question removed."""
    c = cfg.criticality
    prompt_of = training_prompt_builder(cfg)
    fallback_dataset = default_dataset(cfg)
    prompts: dict[str, str] = {}
    seen: set[tuple[str, str, bool]] = set()
    texts: dict[str, list[tuple[str, str]]] = {"positive": [], "negative": []}
    for s in samples:
        if not s.text.strip() or (not s.has_answer and not c.negative_include_no_answer):
            continue
        key = (s.problem_id, s.text.strip(), s.correct)
        if key in seen:
            continue
        seen.add(key)
        if s.problem_id not in prompts:
            dataset = s.dataset or fallback_dataset
            if dataset is None:
                raise DataError(f"sample of problem {s.problem_id!r} has no 'dataset' and the config names none")
            prompts[s.problem_id] = prompt_of(Problem(id=s.problem_id, dataset=dataset, question=s.question,
                                                      gold=s.gold))
        texts["positive" if s.correct else "negative"].append((prompts[s.problem_id], s.text))
    out = {}
    for name, items in texts.items():
        limit = c.max_examples
        if limit is not None and len(items) > limit:
            items = random.Random(f"{seed}:{name}:subsample").sample(items, int(limit))
        out[name] = LazyEncoded(items, encode)
    return out


def adapter_made_for(cfg: DictConfig, name: str, samples_fingerprints: dict[str, str]) -> dict[str, Any]:
    """What an adapter depends on: base model, prompts/tokens, LoRA and SFT settings, the samples, the seed."""
    c = cfg.criticality
    return {"name": name, "model": OmegaConf.to_container(cfg.model, resolve=True),
            "lora": OmegaConf.to_container(c.lora, resolve=True),
            "sft": OmegaConf.to_container(c.sft, resolve=True),
            "max_examples": c.max_examples, "negative_include_no_answer": c.negative_include_no_answer,
            "samples": samples_fingerprints, "seed": int(cfg.criticality.seed)}


def adapter_key(cfg: DictConfig, name: str, samples_fingerprints: dict[str, str]) -> str:
    return config_hash(adapter_made_for(cfg, name, samples_fingerprints))


def work_identity(config: Any) -> dict[str, Any]:
    return identity(config, "weights")


def made_for(config: Any, inputs: Mapping[str, str]) -> dict[str, Any]:
    """What the weighted pairs are made for (compared with a manifest's record): the identity and the inputs."""
    return {**work_identity(config), "inputs": dict(inputs)}


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (as the train stage does): non-reentrant checkpointing, and input
    embeddings that require grad so that a LoRA model with a frozen base still has a graph to backpropagate."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def checkpoint_dir(output_dir: Path, name: str) -> Path:
    return output_dir / CHECKPOINTS / name


def check_adapters(output_dir: Path, made_for: dict[str, dict[str, Any]]) -> dict[str, tuple[Path, dict] | None]:
    """Before anything trains: every saved adapter and in-progress checkpoint in output_dir must be made for these
    inputs (else OutputConflict, and nothing is touched). Returns each adapter's checkpoint to resume from, if any."""
    resume = {}
    for name in ADAPTERS:
        path = output_dir / name
        if path.is_dir() and any(path.iterdir()):
            saved = saved_adapter_info(path) or {}
            check_made_for(path, f"the {name} LoRA adapter", stored=saved.get("made_for"), current=made_for[name],
                           stored_hash=saved.get("key"), option=OUTPUT_OPTION)
        latest = latest_checkpoint(checkpoint_dir(output_dir, name))
        if latest is not None:
            ckpt, info = latest
            check_made_for(ckpt, f"an in-progress checkpoint of the {name} LoRA adapter", stored=info.get("made_for"),
                           current=made_for[name], stored_hash=info.get("key"), option=OUTPUT_OPTION)
        resume[name] = latest
    return resume


def build_adapters(model, cfg: DictConfig, sets: dict[str, Sequence[EncodedResponse]], output_dir: Path,
                   samples_fps: dict[str, str], pad_id: int, device: torch.device, wandb_run) -> tuple[Any, dict]:
    """The positive and negative adapters on one base model: reused from output_dir when trained for the same
    inputs (a killed run resumes after the first adapter), resumed from their newest in-progress checkpoint, else
    trained from the start, and saved; an adapter or checkpoint made for other inputs stops the stage
    (OutputConflict) before anything trains."""
    c = cfg.criticality
    lora = lora_config(c.lora, model)
    sft = SFTConfig(**OmegaConf.to_container(c.sft, resolve=True), seed=int(c.seed),
                    logps_chunk_size=c.get("logps_chunk_size", DEFAULT_CHUNK_SIZE))
    save_every = int(c.get("save_every", DEFAULT_SAVE_EVERY) or 0)
    made_for = {name: adapter_made_for(cfg, name, samples_fps) for name in ADAPTERS}
    resume = check_adapters(output_dir, made_for)
    reports = {}
    for name in ADAPTERS:
        key = config_hash(made_for[name])
        path = output_dir / name
        ckpt_dir = checkpoint_dir(output_dir, name)
        if path.is_dir() and any(path.iterdir()):  # trained for these inputs (check_adapters)
            log.info("weights: reusing the %s adapter in %s", name, path)
            model = load_adapter(model, name, path)
            reports[name] = (saved_adapter_info(path) or {}).get("report", {})
            remove_checkpoints(ckpt_dir)  # left by a run killed between saving the adapter and cleaning up
            continue
        if not sets[name]:
            kind = "correct" if name == "positive" else "wrong"
            raise DataError(f"no {kind} samples to fine-tune the {name} model on (samples: {list(samples_fps)})")
        # Seeded per adapter (LoRA init, dropout, order): the same adapter whether or not the other was reused.
        torch.manual_seed(int(c.seed) * len(ADAPTERS) + ADAPTERS.index(name))
        model = add_adapter(model, name, lora)
        resume_from = None
        if resume[name] is not None:
            resume_from, info = resume[name]
            log.info("weights: resuming the %s adapter at step %d/%d from %s", name, info["step"],
                     info["total_steps"], resume_from)
        report = train_adapter(model, name, sets[name], sft, pad_id=pad_id, device=device, progress=bool(cfg.progress),
                               on_step=wandb_run.log if wandb_run else None, checkpoint_dir=ckpt_dir,
                               save_every=save_every, checkpoint_meta={"key": key, "made_for": made_for[name]},
                               resume_from=resume_from, progress_every=progress_every(cfg))
        save_adapter(model, name, path, {"key": key, "made_for": made_for[name], "report": report})
        remove_checkpoints(ckpt_dir)
        log.info("weights: %s adapter trained on %d examples, loss %.3f -> %.3f", name, report["examples"],
                 report["loss_first"], report["loss_last"])
        reports[name] = report
    return model, reports


def run(cfg: DictConfig) -> Path:
    pairs_dir, samples_dir, output_dir = Path(cfg.input_dir), Path(cfg.samples_dir), Path(cfg.output_dir)
    model_path = str(cfg.model.name_or_path)
    samples_in = samples_inputs(samples_dir)
    if not samples_in:
        raise DataError(f"{samples_dir}: no sample shards (shard-*.jsonl): the weights stage fine-tunes on them")
    inputs = [pairs_dir / "pairs.jsonl", *samples_in, model_path]
    if is_complete(output_dir, identity(cfg, "weights"), inputs):
        log.info("weights: %s is complete for this config and these inputs; nothing to do", output_dir)
        return output_dir / "pairs.jsonl"
    # Before anything is written: weights of another config or other inputs in output_dir are never replaced.
    check_manifest(output_dir, made_for, cfg, inputs, option=OUTPUT_OPTION)
    check_samples_finished(samples_dir)
    c = cfg.criticality
    pairs = [row for _, row in iter_pair_rows(pairs_dir / "pairs.jsonl")]
    device = resolve_device(c.device)
    trust = bool(cfg.model.get("trust_remote_code", False))
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust)
    model = load_causal_lm(model_path, dtype=cfg.model.get("dtype", "auto"), trust_remote_code=trust, device=device)
    if c.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    pad_id = tokenizer.pad_token_id
    encode = encoder(cfg, tokenizer)
    sets = finetune_sets(read_samples(samples_dir), cfg, encode, int(cfg.criticality.seed))
    wandb_run = init_wandb(cfg, job_type="weights")
    # Content, not the samples manifest: a sample stage rerun that only rewrote its manifest keeps the adapters.
    samples_fps = {p.name: file_sha256(p)[:16] for p in sample_files(samples_dir)}
    model, reports = build_adapters(model, cfg, sets, output_dir, samples_fps, pad_id, device, wandb_run)
    # After the adapters, which check their own records: a refused run must leave the directory as it found it.
    mark_running(output_dir, "weights", cfg, inputs, key=identity(cfg, "weights"))

    sides = ["rejected", "chosen"] if c.weight_chosen else ["rejected"]
    to_weight = {"rejected": rejected_weights, "chosen": chosen_weights}
    digits = int(c.decimals)
    for side in sides:
        encoded = [encode(row["prompt"], row[side]) for row in pairs]
        probs = score_responses(model, encoded, pad_id=pad_id, lam=float(c.lam), batch_size=int(c.score_batch_size),
                                device=device, progress=bool(cfg.progress), progress_every=progress_every(cfg),
                                chunk_size=c.get("logps_chunk_size", DEFAULT_CHUNK_SIZE))
        for row, p in zip(pairs, probs, strict=True):
            row[f"{side}_weights"] = [round(w, digits) for w in to_weight[side](p).tolist()]
    vocabulary = vocabulary_id(tokenizer)
    for row in pairs:
        row["weights_tokenizer"] = vocabulary

    mean_rejected = sum(sum(r["rejected_weights"]) for r in pairs) / max(1, sum(len(r["rejected_weights"])
                                                                                  for r in pairs))
    summary = {"pairs": len(pairs), "mean_rejected_weight": mean_rejected, "lambda": float(c.lam),
               "adapters": reports, "weights_tokenizer": vocabulary, "model": model_identity(model_path)}
    atomic_write_jsonl(output_dir / "pairs.jsonl", pairs)
    atomic_write_json(output_dir / "weights_stats.json", summary)
    if wandb_run:
        wandb_run.summary.update({"mean_rejected_weight": mean_rejected, "pairs": len(pairs)})
        wandb_run.finish()
    print(f"weights: {len(pairs)} pairs, mean rejected weight {mean_rejected:.4f} -> {output_dir / 'pairs.jsonl'}",
          flush=True)
    write_manifest(output_dir, "weights", cfg, inputs, key=identity(cfg, "weights"),
                   outputs={"pairs": "pairs.jsonl", "adapters": list(ADAPTERS), "stats": "weights_stats.json",
                            "num_pairs": len(pairs)})
    return output_dir / "pairs.jsonl"


main = stage_main("weights")(run)

if __name__ == "__main__":
    main()
