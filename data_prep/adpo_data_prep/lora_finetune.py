"""One epoch (or a few) of LoRA SFT with a completion-only loss: the positive/negative models of cDPO.

A plain torch loop (AdamW, linear schedule, gradient accumulation) on a peft model that may hold several adapters:
only the active adapter's parameters train. Adapters are saved atomically with a key of what they were trained on,
so a rerun reuses an adapter that is already trained for the same inputs.
"""

from __future__ import annotations

import json
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
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from adpo.data.tokenize import EncodedResponse, collate_responses
from adpo.io import atomic_write_json
from adpo.logprobs import DEFAULT_CHUNK_SIZE, completion_loss

TRAIN_INFO = "train_info.json"


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
        if path.exists():
            shutil.rmtree(path)
        os.replace(saved, path)
    return path


def train_adapter(model: PeftModel, name: str, examples: Sequence[EncodedResponse], cfg: SFTConfig, *, pad_id: int,
                  device: torch.device | str = "cpu", progress: bool = False,
                  on_step: Callable[[dict], None] | None = None) -> dict:
    """Train the active adapter `name` on (prompt, response) examples, loss on response tokens only."""
    if not examples:
        raise ValueError(f"no training examples for the {name} model")
    model.set_adapter(name)
    model.train()
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    if not params or any(f".{name}." not in n for n, p in model.named_parameters() if p.requires_grad):
        raise RuntimeError(f"only adapter {name!r} should be trainable")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = math.ceil(batches_per_epoch / cfg.grad_accum) * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    rng = random.Random(f"{cfg.seed}:{name}")
    losses: list[float] = []
    tokens = 0
    bar = tqdm(total=batches_per_epoch * cfg.epochs, desc=f"LoRA SFT ({name})", unit="batch", disable=not progress)
    for _ in range(cfg.epochs):
        micro = 0
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
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
                if on_step:
                    on_step({f"{name}/loss": losses[-1], f"{name}/lr": scheduler.get_last_lr()[0]})
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    return {"examples": len(examples), "batches": len(losses), "optimizer_steps": total_steps,
            "response_tokens": tokens, "loss_first": sum(head) / len(head), "loss_last": sum(tail) / len(tail)}
