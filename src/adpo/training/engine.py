"""Everything around `deepspeed.initialize`: process-group environment, the DeepSpeed config, the policy, the
optimizer and its schedule. The same code runs on one CPU process, one GPU, or many GPUs across nodes.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adpo.models import lora_config

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed_env() -> None:
    """Let a bare `adpo-train` (no launcher) run as a world of one, as launchers would have set it up."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init_distributed() -> tuple[int, int]:
    """Start the process group (NCCL on GPUs, gloo on CPUs) and pick this rank's device. Returns (rank, world)."""
    ensure_distributed_env()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        # DeepSpeed's CPU backend compiles a shared-memory op with g++ at start-up (minutes on a fresh machine);
        # ZeRO never uses it.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    else:
        accelerator.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def device():
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def bf16_available() -> bool:
    """bf16 "auto": on for accelerators that support it (CUDA with bf16), off on CPU, where it is slow."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    return accelerator.device_name() != "cpu" and bool(accelerator.is_bf16_supported())


def deepspeed_config(ds_cfg: DictConfig | dict, train_cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict: the deepspeed/ group as given, with batch sizes, clipping and "auto" filled in."""
    config = OmegaConf.to_container(ds_cfg, resolve=True) if isinstance(ds_cfg, DictConfig) else dict(ds_cfg)
    config = dict(config or {})
    micro, accum = int(train_cfg.micro_batch_size), int(train_cfg.gradient_accumulation_steps)
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = accum
    config["train_batch_size"] = micro * accum * world_size
    config.setdefault("gradient_clipping", float(train_cfg.max_grad_norm or 0.0))
    for precision in ("bf16", "fp16"):
        section = dict(config.get(precision) or {})
        if section.get("enabled") == "auto":
            section["enabled"] = bf16_available() if precision == "bf16" else False
        if section:
            config[precision] = section
    config.setdefault("zero_optimization", {"stage": 0})
    return config


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def apply_lora(model, lora_cfg: DictConfig):
    from peft import get_peft_model

    # Given the model, LoRA wraps the language model only (not Gemma-3's vision tower).
    return get_peft_model(model, lora_config(lora_cfg, model))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and norm scales (1-D parameters) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # Under ZeRO-3 zero.Init a parameter is a flat placeholder; ds_shape is its real shape.
            ndim = len(getattr(p, "ds_shape", p.shape))
            (decay if ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


LR_SCHEDULES = ("cosine", "linear")


def lr_schedule(name: str):
    """transformers' warmup + decay schedule named by train.schedule: fn(optimizer, warmup_steps, total_steps)."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    schedules = dict(zip(LR_SCHEDULES, (get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup)))
    if name not in schedules:
        raise ValueError(f"train.schedule must be one of {LR_SCHEDULES}, got {name!r}")
    return schedules[name]


def build_engine(model: torch.nn.Module, train_cfg: DictConfig, ds_config: dict, total_steps: int):
    """deepspeed.initialize with torch's AdamW (DeepSpeed's fused Adam would be compiled on first use) and a
    linear warmup then train.schedule's decay to 0 (cosine, or linear as TRL's default), stepped once per optimizer
    step."""
    import deepspeed

    warmup = int(round(float(train_cfg.warmup_ratio) * total_steps))
    make_schedule = lr_schedule(str(train_cfg.get("schedule", "cosine")))
    # fused: one kernel over all parameters (CPU and CUDA); the default per-tensor loop was ~10% of a CPU step.
    optimizer = torch.optim.AdamW(param_groups(model, float(train_cfg.weight_decay)), lr=float(train_cfg.lr),
                                  betas=tuple(train_cfg.adam_betas), eps=float(train_cfg.adam_eps),
                                  fused=bool(train_cfg.get("fused_optimizer", True)))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: make_schedule(opt, warmup, total_steps),
        config=ds_config,
    )
    return engine
