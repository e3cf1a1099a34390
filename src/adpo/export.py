"""The trained policy as files: what the train stage writes to output_dir/model, its model card, and the hub upload.

    train.export=adapter   (LoRA runs, the default) PEFT's adapter_config.json + adapter_model.safetensors, the
                           tokenizer, and the base model it adapts (adapter_config.json's base_model_name_or_path: a
                           hub id, or a local directory as an absolute path; its revision when one was set)
    train.export=merged    the adapter merged into the base: full weights in the transformers format (as before)
    full fine-tuning       always full weights (train.export is not read)

Beside the weights: export.json and README.md, the model card (adpo.model_card). The directory is written whole or not at all (adpo.io.atomic_directory): a run killed
while exporting leaves the previous directory (or none), and the rerun resumes from its last checkpoint and exports
again. With train.push_to_hub=true, rank 0 then uploads the directory (huggingface_hub: create_repo +
upload_folder) to train.hub_model_id.

The evaluation and sampling stages load any of the three (adpo.models.load_policy, the vLLM backend's LoRA
support). For a finished run:

    python -m adpo.export merge <train_dir>/model <out_dir>          # merged full weights from an adapter
    python -m adpo.export push <train_dir>/model --repo-id me/name   # upload (card included)
    python -m adpo.export card <train_dir>/model                     # render README.md again
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from adpo.io import atomic_directory, atomic_write_json, atomic_write_text
from adpo.model_card import CARD, EXPORT_RECORD, export_record, last_metrics, read_record, render_card, write_card
from adpo.models import ADAPTER_CONFIG, adapter_info, copy_processor_files, resolve_model_path

log = logging.getLogger(__name__)

EXPORTS = ("adapter", "merged")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def export_kind(tcfg: Mapping[str, Any], lora: bool) -> str:
    """"adapter" or "merged" for a LoRA run (train.export, default adapter), "full" for full fine-tuning."""
    if not lora:
        return "full"
    kind = str(tcfg.get("export") or "adapter")
    if kind not in EXPORTS:
        raise ValueError(f"train.export must be one of {EXPORTS} (LoRA runs), got {kind!r}")
    return kind


def hub_repo_name(cfg: Mapping[str, Any]) -> str:
    """train.hub_model_id, or a name made from the model, data and run (the token's own namespace)."""
    tcfg = cfg["train"]
    if tcfg.get("hub_model_id"):
        return str(tcfg["hub_model_id"])
    name = f"{cfg['model'].get('name', 'model')}-{cfg['data'].get('name', 'data')}-{cfg.get('run_name') or 'run'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:96]


# --- gathering the weights (every rank) ---------------------------------------------------------------------------

def adapter_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The trained (LoRA) parameters on CPU at rank 0 under their PeftModel names; None on the other ranks. Under
    ZeRO-3 only these are gathered, never the frozen base weights. Every rank must call it."""
    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    if engine.zero_optimization_partition_weights():
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            state = ({n: p.detach().cpu().clone() for n, p in named} if dist.get_rank() == 0 else None)
        return state
    if dist.get_rank() != 0:
        return None
    return {n: p.detach().cpu().clone() for n, p in named}


# --- writing the directory ----------------------------------------------------------------------------------------

def _save_adapter(peft_model, state: dict[str, torch.Tensor], out: Path, base_model: str,
                  revision: str | None) -> None:
    config = peft_model.peft_config["default"]
    saved = (config.base_model_name_or_path, config.revision)
    config.base_model_name_or_path, config.revision = base_model, revision
    try:
        # save_embedding_layers=False: only LoRA matrices are trained ("auto" looks at the partitioned embeddings).
        peft_model.save_pretrained(str(out), state_dict=state, save_embedding_layers=False)
    finally:
        config.base_model_name_or_path, config.revision = saved
    _sort_module_lists(out / "adapter_config.json")


# LoraConfig keeps these as Python sets, which PEFT writes in the process's string-hash order: sorted, the same run
# exported twice (a resumed export, a rerun) gives the same bytes.
SET_VALUED = ("target_modules", "modules_to_save", "exclude_modules")


def _sort_module_lists(path: Path) -> None:
    config = json.loads(path.read_text())
    for key in SET_VALUED:
        if isinstance(config.get(key), list) and all(isinstance(v, str) for v in config[key]):
            config[key] = sorted(config[key])
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _merged_model(base_model: str, model_kwargs: Mapping[str, Any], lora_cfg, state: dict[str, torch.Tensor]):
    """The LoRA policy rebuilt on CPU from its base model and `state` (full, or the adapter's parameters only),
    merged: plain transformers weights."""
    from adpo.models import load_causal_lm
    from adpo.training.engine import apply_lora

    model = apply_lora(load_causal_lm(base_model, **model_kwargs), lora_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any("lora_" in k for k in missing):
        raise RuntimeError(f"the trained state does not fit the rebuilt LoRA model: missing "
                           f"{[k for k in missing if 'lora_' in k][:5]}, unexpected {unexpected[:5]}")
    return model.merge_and_unload()


def export_policy(engine, tokenizer, out_dir: str | Path, cfg, *, model_kwargs: Mapping[str, Any], lora: bool,
                  final_metrics: Mapping[str, Any] | None = None,
                  summary: Mapping[str, Any] | None = None, push: bool = True) -> dict[str, Any] | None:
    """Write out_dir from rank 0 (call on every rank): the adapter, merged or full weights as train.export and the
    run say, the tokenizer, export.json and the model card; then push it when train.push_to_hub (and `push`: the
    snapshots along training are not uploaded). Returns the
    export record on rank 0, None elsewhere."""
    out_dir = Path(out_dir)
    tcfg, mcfg = cfg.train, cfg.model
    kind = export_kind(tcfg, lora)
    base_model = resolve_model_path(mcfg.name_or_path)
    if kind == "adapter":
        state = adapter_state_dict(engine)
    else:
        from adpo.training.checkpoint import full_state_dict

        state = full_state_dict(engine)
    record = None
    if dist.get_rank() == 0:
        # After ZeRO-3, transformers would load any new model with zero.Init (and hang on a one-rank gather).
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        metrics = dict(final_metrics or {}) or last_metrics(out_dir.parent / "metrics.jsonl")
        with atomic_directory(out_dir) as tmp:
            if kind == "adapter":
                _save_adapter(engine.module, state, tmp, base_model, mcfg.get("revision"))
            elif kind == "merged":
                _merged_model(str(mcfg.name_or_path), model_kwargs, tcfg.lora, state).save_pretrained(str(tmp))
            else:
                engine.module.save_pretrained(str(tmp), state_dict=state)
            tokenizer.save_pretrained(str(tmp))
            # A multimodal base (Gemma-3) needs its processor files for vLLM to load the policy.
            copy_processor_files(mcfg.name_or_path, tmp)
            files = sorted({p.name for p in tmp.iterdir()} | {EXPORT_RECORD, CARD})
            record = export_record(cfg, kind, base_model, metrics, {**dict(summary or {}), "files": files})
            atomic_write_json(tmp / EXPORT_RECORD, record)
            atomic_write_text(tmp / CARD, render_card(record))
        size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
        log.info("model written to %s (%s, %.1f MB)", out_dir, kind, size / 1e6)
    dist.barrier()
    if push and dist.get_rank() == 0 and tcfg.get("push_to_hub"):
        push_to_hub(out_dir, hub_repo_name(cfg), private=bool(tcfg.get("hub_private", True)))
    return record


# --- the hub ------------------------------------------------------------------------------------------------------

def push_to_hub(model_dir: str | Path, repo_id: str, *, private: bool = True, api=None,
                commit_message: str | None = None) -> str:
    """Upload an exported directory (weights or adapter, tokenizer, export.json, README.md) to a hub model repo,
    creating it if needed; returns the repo id. The token is huggingface_hub's (HF_TOKEN, or `hf auth login`)."""
    from huggingface_hub import HfApi

    model_dir = Path(model_dir)
    if not (model_dir / CARD).is_file():
        raise FileNotFoundError(f"{model_dir}: no {CARD} (model card); export the model with adpo.export first")
    api = api or HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    repo = getattr(url, "repo_id", None) or repo_id
    record = read_record(model_dir) or {}
    message = commit_message or f"{record.get('export', 'model')}: {record.get('run_name') or model_dir.name}"
    api.upload_folder(folder_path=str(model_dir), repo_id=repo, repo_type="model", commit_message=message,
                      ignore_patterns=[".*", "*.lock", "*.tmp"])
    log.info("pushed %s to the hub: %s", model_dir, repo)
    return repo


# --- finished runs ------------------------------------------------------------------------------------------------

def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto",
                  trust_remote_code: bool = False) -> Path:
    """Merged full weights (with tokenizer, export.json and card) from an exported adapter directory."""
    from adpo.models import load_policy, load_tokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    info = adapter_info(adapter_dir)
    if info is None:
        raise ValueError(f"{adapter_dir}: not a LoRA adapter directory (no {ADAPTER_CONFIG}, or full weights)")
    model = load_policy(adapter_dir, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(adapter_dir, trust_remote_code=trust_remote_code)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        copy_processor_files(info["base_model"], tmp)
        record = read_record(adapter_dir)
        if record is not None:
            record = {**record, "export": "merged", "merged_from": str(adapter_dir.resolve()),
                      "files": sorted({p.name for p in tmp.iterdir()} | {EXPORT_RECORD, CARD})}
            atomic_write_json(tmp / EXPORT_RECORD, record)
            atomic_write_text(tmp / CARD, render_card(record))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adpo.export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merged full weights from an exported adapter directory")
    merge.add_argument("adapter_dir")
    merge.add_argument("out_dir")
    merge.add_argument("--dtype", default="auto")
    push = sub.add_parser("push", help="upload an exported directory to the hub")
    push.add_argument("model_dir")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--public", action="store_true")
    card = sub.add_parser("card", help="render README.md again from export.json and eval_results.json")
    card.add_argument("model_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "merge":
        print(merge_adapter(args.adapter_dir, args.out_dir, dtype=args.dtype))
    elif args.command == "push":
        print(push_to_hub(args.model_dir, args.repo_id, private=not args.public))
    else:
        print(write_card(args.model_dir))


if __name__ == "__main__":
    main()
