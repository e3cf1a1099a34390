"""One epoch (or a few) of LoRA SFT with a completion-only loss: the positive/negative models of cDPO.

A plain torch loop (AdamW, linear schedule, gradient accumulation) on a peft model that may hold several adapters:
only the active adapter's parameters train. Adapters are saved atomically with a key of what they were trained on,
so a rerun reuses an adapter that is already trained for the same inputs. While an adapter trains, every
`save_every` optimizer steps its whole state (adapter weights, optimizer, schedule, step, RNG, losses) is saved
atomically into a checkpoint directory, from which a killed run resumes to the same adapter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import get_linear_schedule_with_warmup

from adpo.data.tokenize import EncodedResponse, collate_responses
from adpo.io import atomic_write_json, follow_umask
from adpo.logprobs import DEFAULT_CHUNK_SIZE, completion_loss
from adpo.progress import Progress

log = logging.getLogger(__name__)
TRAIN_INFO = "train_info.json"
CHECKPOINT_INFO = "checkpoint.json"  # step, losses, what the adapter is made for: read to decide whether to resume
CHECKPOINT_STATE = "state.pt"  # adapter weights, optimizer, schedule, RNG


@dataclass(frozen=True)
class SFTConfig:
    lr: float = 3e-4
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    logps_chunk_size: int | None = DEFAULT_CHUNK_SIZE


def add_adapter(model, name: str, lora: LoraConfig) -> PeftModel:
    """A fresh adapter `name` on `model` (a base model or a peft model), made active and trainable."""
    if isinstance(model, PeftModel):
        model.add_adapter(name, lora)
    else:
        model = get_peft_model(model, lora, adapter_name=name)
    model.set_adapter(name)
    return model


def load_adapter(model, name: str, path: str | Path) -> PeftModel:
    """A saved adapter loaded under `name` (frozen: it is only used for scoring)."""
    if isinstance(model, PeftModel):
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        return model
    return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)


def saved_adapter_info(path: str | Path) -> dict | None:
    """train_info.json of the adapter saved in `path`: its key, what it was made for (when recorded), its report."""
    info = Path(path) / TRAIN_INFO
    if not info.is_file():
        return None
    try:
        return json.loads(info.read_text())
    except json.JSONDecodeError:
        return None


def saved_adapter_key(path: str | Path) -> str | None:
    return (saved_adapter_info(path) or {}).get("key")


def save_adapter(model: PeftModel, name: str, path: str | Path, info: dict) -> Path:
    """Adapter `name` into `path` (replaced whole, never half-written), with train_info.json (its key, losses).

    The caller replaces only an adapter of its own key: one made for other inputs stops the weights stage first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        model.save_pretrained(tmp, selected_adapters=[name])
        saved = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)  # "default" saves at the top
        atomic_write_json(saved / TRAIN_INFO, info)
        follow_umask(saved)  # a 0700 temporary directory and 0600 safetensors otherwise
        if path.exists():
            shutil.rmtree(path)
        os.replace(saved, path)
    return path


def checkpoints(directory: str | Path) -> list[Path]:
    """The finished checkpoints (step-<k> directories) in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if p.is_dir() and (p / CHECKPOINT_INFO).is_file()
             and (p / CHECKPOINT_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(directory: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `directory` and its checkpoint.json, or None."""
    for path in reversed(checkpoints(directory)):
        try:
            return path, json.loads((path / CHECKPOINT_INFO).read_text())
        except json.JSONDecodeError:  # never half-written (the directory is renamed into place); be safe anyway
            continue
    return None


def save_checkpoint(directory: Path, step: int, info: dict, state: dict) -> Path:
    """step-<k> in `directory`, written in a temporary sibling and renamed into place; older checkpoints go after."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        with open(tmp / CHECKPOINT_STATE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        atomic_write_json(tmp / CHECKPOINT_INFO, info)
        follow_umask(tmp)  # mkdtemp made it 0700
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in directory.iterdir():  # older checkpoints and the temporaries of killed saves
        if old != final and (old.name.startswith("step-") or old.name.startswith(".step-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_checkpoints(directory: str | Path) -> None:
    """Drop an adapter's in-progress checkpoints (once the adapter is saved), and their parent when left empty."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()
    except OSError:
        pass


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_adapter(model: PeftModel, name: str, examples: Sequence[EncodedResponse], cfg: SFTConfig, *, pad_id: int,
                  device: torch.device | str = "cpu", progress: bool = False,
                  on_step: Callable[[dict], None] | None = None, checkpoint_dir: str | Path | None = None,
                  save_every: int = 0, checkpoint_meta: dict | None = None,
                  resume_from: str | Path | None = None, progress_every: float | None = None) -> dict:
    """Train the active adapter `name` on (prompt, response) examples, loss on response tokens only.

    With `checkpoint_dir` and `save_every` > 0, the training state is saved there every `save_every` optimizer steps
    (but not after the last: the caller saves the adapter), with `checkpoint_meta` (what the adapter is made for) in
    its checkpoint.json. `resume_from` (a checkpoint of this adapter, made for the same inputs: the caller checks)
    continues that training: the same adapter as a run that was never stopped. Epoch e's example order is the
    (e+1)-th shuffle of a Random seeded by (seed, name), so the batches already done are skipped by replaying it."""
    if not examples:
        raise ValueError(f"no training examples for the {name} model")
    model.set_adapter(name)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params or any(f".{name}." not in n for n, _ in named):
        raise RuntimeError(f"only adapter {name!r} should be trainable")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    losses: list[float] = []
    tokens = step = 0
    if resume_from is not None:
        resume_from = Path(resume_from)
        info = json.loads((resume_from / CHECKPOINT_INFO).read_text())
        state = torch.load(resume_from / CHECKPOINT_STATE, map_location="cpu", weights_only=True)
        if set(state["adapter"]) != {n for n, _ in named} or info["total_steps"] != total_steps:
            raise RuntimeError(f"{resume_from}: the checkpoint does not fit the {name} adapter being trained "
                               f"({info['total_steps']} steps saved, {total_steps} now)")
        with torch.no_grad():
            for n, p in named:
                p.copy_(state["adapter"][n])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        losses, tokens, step = [float(x) for x in info["losses"]], int(info["tokens"]), int(info["step"])
    # Optimizer steps end at batch boundaries: step k of epoch e has done min(k * grad_accum, batches) batches.
    start_epoch, done_in_epoch = divmod(step, steps_per_epoch)
    skip = min(done_in_epoch * cfg.grad_accum, batches_per_epoch)
    save_every = int(save_every or 0) if checkpoint_dir is not None else 0

    rng = random.Random(f"{cfg.seed}:{name}")
    bar = Progress(batches_per_epoch * cfg.epochs, f"LoRA SFT ({name})", "batch", bar=progress,
                   every_s=progress_every, initial=start_epoch * batches_per_epoch + skip)
    for epoch in range(cfg.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)  # every epoch's shuffle is drawn, done or not, so that the next ones are the same
        if epoch < start_epoch:
            continue
        micro = skip if epoch == start_epoch else 0
        for start in range(micro * cfg.batch_size, len(order), cfg.batch_size):
            batch = collate_responses([examples[i] for i in order[start: start + cfg.batch_size]], pad_id,
                                      with_labels=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = completion_loss(model, **batch, chunk_size=cfg.logps_chunk_size)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
            tokens += int((batch["labels"] != -100).sum())
            micro += 1
            last = start + cfg.batch_size >= len(order)
            if micro % cfg.grad_accum == 0 or last:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if on_step:
                    on_step({f"{name}/loss": losses[-1], f"{name}/lr": scheduler.get_last_lr()[0]})
                if save_every and step % save_every == 0 and step < total_steps:
                    saved = save_checkpoint(
                        Path(checkpoint_dir), step,
                        {**(checkpoint_meta or {}), "adapter": name, "step": step, "total_steps": total_steps,
                         "epoch": epoch, "batches_done_in_epoch": micro, "losses": losses, "tokens": tokens,
                         "examples": len(examples)},
                        {"adapter": {n: p.detach().cpu().clone() for n, p in named},
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "rng": _rng_state()})
                    log.info("LoRA SFT (%s): checkpoint at step %d/%d -> %s", name, step, total_steps, saved)
            bar.update(1, loss=losses[-1])
    bar.close()
    model.eval()
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    return {"examples": len(examples), "batches": len(losses), "optimizer_steps": total_steps,
            "response_tokens": tokens, "loss_first": sum(head) / len(head), "loss_last": sum(tail) / len(tail)}
