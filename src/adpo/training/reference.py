"""The reference model's per-token log-probs, computed once and cached on disk beside the pairs.

The cache is keyed by the reference model (path + weight files, or hub name + revision), the dtype it ran in, the
tokenisation settings and the pairs file's content hash, so that later runs on the same pairs (other methods, seeds,
granularities) reuse it and only the policy is resident during training. With several ranks each computes a shard;
rank 0 merges them and writes the cache atomically.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from adpo.io import atomic_open
from adpo.logprobs import DEFAULT_CHUNK_SIZE
from adpo.progress import Progress
from adpo.training.logps import batch_token_logps
from adpo.training.pairs_data import TokenizedPair, make_batch

log = logging.getLogger(__name__)

CACHE_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")

ReferenceLogps = list[tuple[torch.Tensor, torch.Tensor]]  # (chosen, rejected) per pair, one value per token


def model_fingerprint(name_or_path: str, revision: str | None = None) -> dict:
    """What identifies a model's weights: a local directory by its config and weight files, a hub id by name."""
    path = Path(name_or_path)
    if not path.is_dir():
        return {"hub_id": name_or_path, "revision": revision or "main"}
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json" or file.name.endswith(".index.json"):
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in WEIGHT_SUFFIXES:
            # Hashing many GB of weights would cost minutes; name, size and modification time identify a file
            # that the training or sft stage wrote (atomically, so a rewrite changes the time).
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return {"path": str(path.resolve()), "weights": digest.hexdigest()[:16]}


def cache_key(*, model: dict, dtype: str, tokenization: dict, pairs_sha256: str) -> tuple[str, dict]:
    meta = {"version": CACHE_VERSION, "model": model, "dtype": dtype, "tokenization": tokenization,
            "pairs_sha256": pairs_sha256}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20], meta


def _pack(values: Sequence[torch.Tensor]) -> dict:
    lengths = torch.tensor([v.numel() for v in values], dtype=torch.long)
    flat = torch.cat([v.float().reshape(-1) for v in values]) if values else torch.zeros(0)
    return {"values": flat, "lengths": lengths}


def _unpack(packed: dict) -> list[torch.Tensor]:
    return list(torch.split(packed["values"], packed["lengths"].tolist()))


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load_cache(path: Path, meta: dict, num_pairs: int) -> ReferenceLogps | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a cache is only a cache: a broken one is recomputed
        log.warning("ignoring unreadable reference cache %s (%s)", path, e)
        return None
    if data.get("meta") != meta or len(data["chosen"]["lengths"]) != num_pairs:
        log.warning("ignoring reference cache %s: it was made for other inputs", path)
        return None
    return list(zip(_unpack(data["chosen"]), _unpack(data["rejected"])))


@torch.no_grad()
def compute_reference_logps(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, pad_token_id: int,
                            batch_size: int, device, progress: bool = False,
                            chunk_size: int | None = DEFAULT_CHUNK_SIZE,
                            progress_every: float | None = None) -> ReferenceLogps:
    """Per-token log-probs of both responses of each pair, computed in length-sorted batches."""
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].num_tokens)
    out: list = [None] * len(pairs)
    placeholder = [(torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids))) for p in pairs]
    bar = Progress(len(order), "reference log-probs", "pair", bar=progress, every_s=progress_every)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = make_batch([pairs[i] for i in idx], [placeholder[i] for i in idx], pad_token_id).to(device)
        logps = batch_token_logps(model, batch, chunk_size=chunk_size).float().cpu()
        mask = batch.response_mask.cpu()
        n = len(idx)
        for row, i in enumerate(idx):
            out[i] = (logps[row][mask[row]].clone(), logps[n + row][mask[n + row]].clone())
        bar.update(n)
    bar.close()
    return out


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _job_token(world: int) -> str:
    """A random token drawn by rank 0 and shared by every rank of this job."""
    token = [uuid.uuid4().hex[:12]]
    if world > 1:
        dist.broadcast_object_list(token, src=0)
    return token[0]


def _part_path(cache_path: Path, token: str, rank: int, world: int) -> Path:
    return cache_path.with_name(f".{cache_path.name}.{token}.part{rank}of{world}")


def reference_logps(pairs: Sequence[TokenizedPair], *, cache_path: Path, meta: dict, load_model, pad_token_id: int,
                    batch_size: int, device, progress: bool = False,
                    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
                    progress_every: float | None = None) -> tuple[ReferenceLogps, bool]:
    """The cached log-probs, computing them first when absent (every rank a shard). Returns (logps, was_cached).

    `load_model()` builds the reference model; it is called only when the cache is missing and freed afterwards.
    """
    rank, world = _world()
    cached = load_cache(cache_path, meta, len(pairs))
    # Every rank must agree on whether to compute (one rank may see a cache another does not, on a slow filesystem).
    have = torch.tensor([0 if cached is None else 1])
    if world > 1:
        dist.all_reduce(have, op=dist.ReduceOp.MIN)
    if int(have) == 1:
        return cached, True

    log.info("computing reference log-probs for %d pairs -> %s", len(pairs), cache_path)
    shard = list(range(rank, len(pairs), world))
    model = load_model()
    values = compute_reference_logps(model, [pairs[i] for i in shard], pad_token_id=pad_token_id,
                                     batch_size=batch_size, device=device, progress=progress and rank == 0,
                                     chunk_size=chunk_size, progress_every=progress_every if rank == 0 else None)
    del model
    gc.collect()
    with contextlib.suppress(Exception):
        torch.cuda.empty_cache()

    # Jobs of one sweep on the same pairs (DPO and ADPO, cDPO and cADPO) compute the same cache at the same time:
    # each job's parts carry a token of its own, so that one job never reads or deletes another's.
    token = _job_token(world)
    part = _part_path(cache_path, token, rank, world)
    if world > 1:
        _atomic_torch_save({"index": shard, "values": values}, part)
    _barrier()
    if rank == 0:
        merged: list = [None] * len(pairs)
        if world == 1:
            for i, v in zip(shard, values):
                merged[i] = v
        else:
            for r in range(world):
                other = _part_path(cache_path, token, r, world)
                data = torch.load(other, map_location="cpu", weights_only=True)
                for i, v in zip(data["index"], data["values"]):
                    merged[i] = v
        _atomic_torch_save({"meta": meta, "chosen": _pack([c for c, _ in merged]),
                            "rejected": _pack([r for _, r in merged])}, cache_path)
    _barrier()
    if world > 1:
        part.unlink(missing_ok=True)
    result = load_cache(cache_path, meta, len(pairs))
    if result is None:
        raise RuntimeError(f"reference cache {cache_path} was written but cannot be read back")
    return result, False
