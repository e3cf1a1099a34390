"""The training run, start to end: pairs -> cached reference log-probs -> DeepSpeed engine (setup_training) -> steps
with logging and checkpoints -> output_dir/model (the loop of train()). Every rank runs train(); only rank 0 writes
logs, wandb and the model.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from adpo.config_diff import check_made_for, check_manifest
from adpo.data.tokenize import LENGTH_POLICIES, within_length_limits
from adpo.io import DataError, atomic_write_jsonl, atomic_write_text, file_sha256
from adpo.logprobs import DEFAULT_CHUNK_SIZE
from adpo.manifest import config_hash, identity
from adpo.models import load_causal_lm, load_tokenizer
from adpo.progress import Progress, progress_every
from adpo.training import checkpoint, engine as eng
from adpo.training.pairs_checks import checked_pairs
from adpo.training.pairs_data import (PAIRS_FILE, PairBatch, TokenizedPair, check_weights_tokenizer, make_batch,
                                      read_pairs)
from adpo.training.heldout import evaluate_heldout, heldout_batches, heldout_mask
from adpo.training.preemption import StopRequest
from adpo.training.reference import ReferenceLogps, cache_key, model_fingerprint, reference_logps
from adpo.training.schedule import DataSchedule
from adpo.training.step import MethodSpec, train_step

log = logging.getLogger(__name__)


class MetricWindow:
    """Metrics summed over the steps since the last log, averaged over steps and ranks when reported."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.seconds = 0.0

    def add(self, metrics: dict[str, torch.Tensor], seconds: float) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()
        self.steps += 1
        self.seconds += seconds

    def reduce(self, world: int) -> dict[str, float]:
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[n] for n in names])
        if world > 1:
            dist.all_reduce(stacked)
        values = dict(zip(names, stacked.tolist()))
        out = {n: v / (self.steps * world) for n, v in values.items() if n != "tokens"}
        out["tokens_per_second"] = values["tokens"] / max(self.seconds, 1e-9)
        self.sums, self.steps, self.seconds = {}, 0, 0.0
        return out


def _wandb_run_id(output_dir: Path) -> str:
    path = output_dir / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    atomic_write_text(path, run_id + "\n")
    return run_id


def _truncate_metrics_log(path: Path, after_step: int) -> None:
    """On resume, forget the log lines of steps that will be trained again (and a line cut short by the kill)."""
    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= after_step:
            rows.append(row)
    atomic_write_jsonl(path, rows)


# How often to log or save, and how the cache is computed, do not change the training: a run may resume across them.
BOOKKEEPING_KEYS = ("save_every", "keep_checkpoints", "log_every", "eval_every", "resume", "reference_batch_size",
                    "reference_cache_dir", "export", "snapshot_every", "snapshot_at")


CHECKPOINTS = "checkpoints"
OUTPUT_OPTION = "paths.train"  # the key that names output_dir, offered when it holds another config's run
# Evaluable exports of the policy along training (train.snapshot_every / snapshot_at): snapshots/step-NNNNNN/, each
# like model/; adpo-trajectory measures them.
SNAPSHOTS = "snapshots"


def snapshot_dir(output_dir: Path, step: int) -> Path:
    return output_dir / SNAPSHOTS / f"step-{step:06d}"


def work_identity(config: Any) -> dict[str, Any]:
    """What decides the trained policy (a DictConfig, or a manifest's recorded config): checkpoints resume across
    everything else."""
    return identity(config, "train", also_not_hashed=[f"train.{k}" for k in BOOKKEEPING_KEYS])


def resume_hash(cfg: DictConfig) -> str:
    return config_hash(work_identity(cfg))


def refuse_other_work(cfg: DictConfig, output_dir: Path) -> None:
    """Before anything is built: a run (finished or checkpointed) of another config in output_dir is never resumed
    or overwritten, whether or not train.resume is set; OutputConflict names what differs."""
    check_manifest(output_dir, lambda config, _inputs: work_identity(config), cfg, option=OUTPUT_OPTION)
    checkpoint.check_checkpoints(output_dir / CHECKPOINTS, work_identity(cfg), option=OUTPUT_OPTION)


@dataclass
class TrainingSetup:
    """Everything a run builds before its first step: train() builds it with setup_training, and so do the benchmarks,
    which then time the real step on it."""

    tokenizer: Any
    pairs: list[TokenizedPair]
    pairs_dropped: int  # over the length limits, under train.length_policy=drop
    reference: ReferenceLogps
    reference_cache: Path
    reference_seconds: float  # computing the reference log-probs (about 0 when the cache was reused)
    method: MethodSpec
    schedule: DataSchedule
    total_steps: int
    ds_config: dict
    model_kwargs: dict
    lora: bool
    engine: Any
    rank: int
    world: int
    device: torch.device
    progress: bool
    # Kept alive for the whole run under ZeRO-3: transformers holds only a weak reference to it.
    hf_deepspeed_config: Any = None
    logps_chunk_size: int | None = DEFAULT_CHUNK_SIZE
    heldout_pairs: list[TokenizedPair] = field(default_factory=list)  # never trained on (train.heldout_pairs)
    heldout_reference: list = field(default_factory=list)
    pairs_checks: dict = field(default_factory=dict)  # pairs_dropped / pairs_truncated counts (pairs_checks)

    def _batch(self, pairs: list[TokenizedPair], reference: list) -> PairBatch:
        return make_batch(pairs, reference, self.tokenizer.pad_token_id, use_weights=self.method.use_weights,
                          eos_weight=self.method.eos_weight, eos_token_id=self.tokenizer.eos_token_id).to(self.device)

    def micro_batches(self, step: int) -> list[PairBatch]:
        """This rank's micro-batches of optimizer step `step` (0-based), on the device."""
        return [self._batch([self.pairs[i] for i in idx], [self.reference[i] for i in idx])
                for idx in self.schedule.micro_batches(step, self.rank)]

    def heldout_metrics(self) -> dict[str, float]:
        """eval/<metric> over the held-out pairs (every rank must call it: the ranks share the work)."""
        shares = heldout_batches(len(self.heldout_pairs), self.schedule.micro, self.rank, self.world)
        batches = [self._batch([self.heldout_pairs[i] for i in idx], [self.heldout_reference[i] for i in idx])
                   if idx else None for idx in shares]
        placeholder = self._batch(self.heldout_pairs[:1], self.heldout_reference[:1])
        return evaluate_heldout(self.engine, batches, self.method, world=self.world, device=self.device,
                                logps_chunk_size=self.logps_chunk_size, placeholder=placeholder)


def logps_chunk_size(tcfg: DictConfig) -> int | None:
    value = tcfg.get("logps_chunk_size", DEFAULT_CHUNK_SIZE)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"train.logps_chunk_size must be a positive number of positions or null, got {value!r}")
    return value


def setup_training(cfg: DictConfig) -> TrainingSetup:
    """Tokenised pairs, cached reference log-probs, the policy (with gradient checkpointing and LoRA as configured) in
    its DeepSpeed engine, and the data schedule: all that the loop of train() needs."""
    tcfg, mcfg = cfg.train, cfg.model
    method = MethodSpec.from_cfg(cfg.method)
    chunk_size = logps_chunk_size(tcfg)
    eng.lr_schedule(str(tcfg.get("schedule", "cosine")))  # a bad name fails here, not after the reference pass
    pairs_path = Path(cfg.input_dir) / PAIRS_FILE
    progress = bool(cfg.get("progress", True)) and eng.env_rank() == 0
    if not progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()

    # --- data: read and checked before any process group is started, so a bad file fails at once ----------------
    tokenizer = load_tokenizer(mcfg.name_or_path, bool(mcfg.get("trust_remote_code", False)))
    tokenization = {"prompt_format": str(mcfg.prompt_format), "max_prompt_length": mcfg.get("max_prompt_length"),
                    "max_length": mcfg.get("max_length")}
    records = read_pairs(pairs_path, use_weights=method.use_weights)
    if method.use_weights:
        check_weights_tokenizer(records, tokenizer, str(mcfg.name_or_path))
    # Degenerate and repeated pairs are left out (none left: refused) before the reference pass, on every rank alike.
    records, pairs, checks = checked_pairs(pairs_path, records, tokenizer, **tokenization)
    length_policy = str(tcfg.get("length_policy", "truncate"))
    if length_policy not in LENGTH_POLICIES:
        raise ValueError(f"train.length_policy must be one of {LENGTH_POLICIES}, got {length_policy!r}")
    # The reference log-probs are computed for every pair (one cache whatever the policy), then the same pairs kept.
    keep = ([within_length_limits(tokenizer, r.prompt, (r.chosen, r.rejected), **tokenization) for r in records]
            if length_policy == "drop" else [True] * len(pairs))
    dropped = keep.count(False)
    if eng.env_rank() == 0:
        checks.log_findings(keep)
    kept_prompts = [r.prompt for r, k in zip(records, keep) if k]
    held = heldout_mask(kept_prompts, int(tcfg.get("heldout_pairs") or 0), int(tcfg.seed)) if kept_prompts else []
    if dropped:
        log.info("train.length_policy=drop: %d of %d pairs left out (prompt >= model.max_prompt_length=%s or "
                 "prompt + response >= model.max_length=%s tokens)", dropped, len(pairs),
                 tokenization["max_prompt_length"], tokenization["max_length"])
    if dropped == len(pairs):
        raise DataError(f"{pairs_path}: every pair is over the length limits (model.max_prompt_length="
                        f"{tokenization['max_prompt_length']}, model.max_length={tokenization['max_length']}) "
                        "and train.length_policy=drop leaves out all of them")

    rank, world = eng.init_distributed()
    if rank != 0:
        logging.getLogger("adpo").setLevel(logging.WARNING)
    device = eng.device()
    torch.manual_seed(int(tcfg.seed))
    schedule = DataSchedule(held.count(False), micro_batch_size=int(tcfg.micro_batch_size),
                            accumulation=int(tcfg.gradient_accumulation_steps), world_size=world,
                            seed=int(tcfg.seed))
    total_steps = int(tcfg.max_steps) if tcfg.get("max_steps") else int(tcfg.epochs) * schedule.steps_per_epoch
    ds_config = eng.deepspeed_config(cfg.deepspeed, tcfg, world)
    bf16 = bool(ds_config.get("bf16", {}).get("enabled", False))
    model_kwargs = {"dtype": str(mcfg.get("dtype", "auto")),
                    "trust_remote_code": bool(mcfg.get("trust_remote_code", False)),
                    "revision": mcfg.get("revision")}
    if held.count(True):
        log.info("train.heldout_pairs: %d pairs of %d questions held out for eval/* metrics every %s steps",
                 held.count(True), len({p for p, h in zip(kept_prompts, held) if h}), tcfg.get("eval_every"))
    log.info("%d pairs, %d ranks, global batch %d, %d steps (%d per epoch), method %s %s, ZeRO-%d%s",
             held.count(False), world, schedule.global_batch, total_steps, schedule.steps_per_epoch, cfg.method.name,
             method.granularity, eng.zero_stage(ds_config), ", bf16" if bf16 else "")

    # --- reference log-probs: computed once, cached beside the pairs --------------------------------------------
    ref_name = tcfg.get("reference_model") or mcfg.name_or_path
    ref_dtype = "bfloat16" if bf16 else model_kwargs["dtype"]
    key, meta = cache_key(model=model_fingerprint(ref_name, mcfg.get("revision")), dtype=ref_dtype,
                          tokenization=tokenization, pairs_sha256=file_sha256(pairs_path))
    cache_path = Path(tcfg.get("reference_cache_dir") or Path(cfg.input_dir) / "reference_logps") / f"{key}.pt"
    started = time.perf_counter()
    reference, cached = reference_logps(
        pairs, cache_path=cache_path, meta=meta, pad_token_id=tokenizer.pad_token_id,
        batch_size=int(tcfg.reference_batch_size), device=device, progress=progress, chunk_size=chunk_size,
        progress_every=progress_every(cfg),
        load_model=lambda: load_causal_lm(ref_name, **{**model_kwargs, "dtype": ref_dtype}).to(device),
    )
    reference_seconds = time.perf_counter() - started
    if dropped:
        pairs = [p for p, k in zip(pairs, keep) if k]
        reference = [r for r, k in zip(reference, keep) if k]
    heldout_pairs = [p for p, h in zip(pairs, held) if h]
    heldout_reference = [r for r, h in zip(reference, held) if h]
    pairs = [p for p, h in zip(pairs, held) if not h]
    reference = [r for r, h in zip(reference, held) if not h]
    log.info("reference log-probs %s %s (%.1f s)", "reused from" if cached else "cached in", cache_path,
             reference_seconds)

    # --- policy and engine --------------------------------------------------------------------------------------
    hf_ds_config = None
    if eng.zero_stage(ds_config) == 3:
        # Load the policy already partitioned (zero.Init), as a model too big for one device must be.
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)
    model = load_causal_lm(mcfg.name_or_path, **model_kwargs)
    if tcfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = bool(tcfg.lora.enabled)
    if lora:
        if tcfg.get("gradient_checkpointing"):
            model.enable_input_require_grads()
        model = eng.apply_lora(model, tcfg.lora)
    engine = eng.build_engine(model, tcfg, ds_config, total_steps)
    return TrainingSetup(tokenizer=tokenizer, pairs=pairs, pairs_dropped=dropped, reference=reference,
                         reference_cache=cache_path,
                         reference_seconds=reference_seconds, method=method, schedule=schedule,
                         total_steps=total_steps, ds_config=ds_config, model_kwargs=model_kwargs, lora=lora,
                         engine=engine, rank=rank, world=world, device=device, progress=progress,
                         hf_deepspeed_config=hf_ds_config, logps_chunk_size=chunk_size,
                         heldout_pairs=heldout_pairs, heldout_reference=heldout_reference,
                         pairs_checks=checks.manifest_outputs(keep))


def _export(setup: TrainingSetup, cfg: DictConfig, out_dir: Path, metrics: dict[str, float], step: int) -> None:
    """The policy as it is now, as an evaluable model directory (every rank calls it; adpo.export)."""
    from adpo.export import export_policy

    export_policy(setup.engine, setup.tokenizer, out_dir, cfg, model_kwargs=setup.model_kwargs, lora=setup.lora,
                  final_metrics=metrics, push=step == setup.total_steps,
                  summary={"steps": step, "pairs": len(setup.pairs),
                           "pairs_held_out": len(setup.heldout_pairs),
                           "pairs_dropped_over_length": setup.pairs_dropped})


def train(cfg: DictConfig, on_start: Callable[[], None] | None = None) -> dict:
    """Train the policy on cfg.input_dir/pairs.jsonl; returns a summary (rank 0's is written to the manifest).
    `on_start` is called on rank 0 once the run is set up and before it writes anything to output_dir."""
    output_dir = Path(cfg.output_dir)
    ckpt_dir = output_dir / CHECKPOINTS
    refuse_other_work(cfg, output_dir)
    setup = setup_training(cfg)
    tcfg = cfg.train
    engine, schedule, method, total_steps = setup.engine, setup.schedule, setup.method, setup.total_steps
    rank, world = setup.rank, setup.world

    # --- resume -------------------------------------------------------------------------------------------------
    run_hash = resume_hash(cfg)
    step = 0
    client_state = (checkpoint.resume(engine, ckpt_dir, frozen_excluded=setup.lora) if tcfg.get("resume", True)
                    else None)
    if client_state is not None:
        # refuse_other_work compared the recorded config; this is the hash the checkpoint itself carries.
        check_made_for(ckpt_dir, "training checkpoints", stored=None, current=work_identity(cfg),
                       stored_hash=client_state.get("config_hash"), option=OUTPUT_OPTION)
        step = int(client_state["step"])
        log.info("resumed from %s at step %d of %d", ckpt_dir, step, total_steps)
    if rank == 0:
        if on_start is not None:
            on_start()
        checkpoint.record_made_for(ckpt_dir, work_identity(cfg))

    metrics_path = output_dir / "metrics.jsonl"
    wandb_run = None
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        if step:
            _truncate_metrics_log(metrics_path, step)
        else:
            metrics_path.unlink(missing_ok=True)
        from adpo.tracking import init_wandb

        wandb_run = init_wandb(cfg, job_type="train", rank=rank, id=_wandb_run_id(output_dir), resume="allow")

    # Everything built so far lives until the end: keep the collector from walking it again and again.
    gc.freeze()

    # --- the loop -----------------------------------------------------------------------------------------------
    window = MetricWindow()
    last: dict[str, float] = {}
    bar = Progress(total_steps, f"train {cfg.method.name} {method.granularity}", "step", initial=step,
                   bar=setup.progress, every_s=progress_every(cfg), enabled=rank == 0)
    pairs_per_step, first_step, loop_start = schedule.global_batch, step, time.perf_counter()
    save_every, log_every = int(tcfg.save_every or 0), max(int(tcfg.log_every or 1), 1)
    snapshot_every = int(tcfg.get("snapshot_every") or 0)
    snapshot_at = {int(s) for s in tcfg.get("snapshot_at") or ()}
    eval_every = max(int(tcfg.get("eval_every") or log_every), 1)
    stop = StopRequest()
    while step < total_steps:
        # Dropout masks depend only on (seed, step, rank): a resumed run draws what an uninterrupted one would.
        torch.manual_seed(int(tcfg.seed) * 1_000_003 + step * 1009 + rank)
        batches = setup.micro_batches(step)
        learning_rate = float(engine.get_lr()[0])  # the rate this step trains with
        started = time.perf_counter()
        metrics = train_step(engine, batches, method, logps_chunk_size=setup.logps_chunk_size)
        window.add(metrics, time.perf_counter() - started)
        step += 1
        row: dict[str, float] = {}
        if step % log_every == 0 or step == total_steps:
            last = window.reduce(world)
            grad_norm = engine.get_global_grad_norm()
            last.update(grad_norm=float(grad_norm) if grad_norm is not None else math.nan,
                        learning_rate=learning_rate, epoch=step / schedule.steps_per_epoch)
            row.update(last)
            bar.set_figures(loss=last["loss"], acc=last["rewards/accuracies"])
        if setup.heldout_pairs and (step % eval_every == 0 or step == total_steps):
            heldout = setup.heldout_metrics()
            last.update(heldout)
            row.update(heldout)
            bar.set_figures(eval_loss=heldout["eval/loss"])
        if row and rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")
            if wandb_run is not None:
                wandb_run.log(row, step=step)
        bar.update(1, pairs_per_s=pairs_per_step * (step - first_step) / max(time.perf_counter() - loop_start, 1e-9))
        if step < total_steps and ((snapshot_every and step % snapshot_every == 0) or step in snapshot_at):
            _export(setup, cfg, snapshot_dir(output_dir, step), last, step)
        stopping = step < total_steps and stop.agreed(world)
        if stopping or step == total_steps or (save_every and step % save_every == 0):
            checkpoint.save(engine, ckpt_dir, step, {"config_hash": run_hash}, keep=int(tcfg.keep_checkpoints),
                            frozen_excluded=setup.lora)
        if stopping:
            bar.close()
            log.warning("saved step %d of %d to %s; rerun the same command (or requeue) to resume", step,
                        total_steps, ckpt_dir)
            if wandb_run is not None:
                wandb_run.finish(exit_code=1)
            stop.stop()
    stop.restore()
    bar.close()
    gc.unfreeze()

    # --- the model for the eval stage ---------------------------------------------------------------------------
    # LoRA: the adapter (train.export=adapter, default) or merged full weights; a model card beside it (adpo.export).
    _export(setup, cfg, output_dir / "model", last, total_steps)
    if wandb_run is not None:
        wandb_run.summary.update({f"final/{k}": v for k, v in last.items()})
        wandb_run.finish()
    return {"rank": rank, "world_size": world, "steps": total_steps, "pairs": len(setup.pairs),
            "pairs_held_out": len(setup.heldout_pairs),
            "pairs_dropped_over_length": setup.pairs_dropped, **setup.pairs_checks,
            "reference_cache": str(setup.reference_cache), "final_metrics": last,
            "deepspeed": OmegaConf.to_container(OmegaConf.create(setup.ds_config))}
