"""Shared by the train tests: small pairs files, running the train stage as a user would, reading wandb's files."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

QUESTIONS = ["Tom has {a} apples and buys {b} more. How many apples does he have?",
             "A box holds {a} pens. How many pens are in {b} boxes?",
             "Sara reads {a} pages a day for {b} days. How many pages does she read?"]


def write_pairs(path: Path, n: int = 16, seed: int = 0, weights_tokenizer=None, **weights_kwargs) -> Path:
    """n pairs of the toy kind: a correct chosen answer and a wrong rejected one, responses of varied lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 30), rng.randint(2, 9)
        q = rng.choice(QUESTIONS).format(a=a, b=b)
        right, wrong = a + b, a + b + rng.randint(1, 5)
        filler = " Let me think step by step." * rng.randint(0, 3)
        rows.append({"id": f"p{i}", "prompt": f"Question: {q}\nAnswer: ",
                     "chosen": f"{a} + {b} = {right}.{filler} The answer is {right}.",
                     "rejected": f"{a} + {b} = {wrong}. The answer is {wrong}.{filler * 2}",
                     "question": q, "gold": str(right)})
    if weights_tokenizer is not None:
        rows = add_weights(rows, weights_tokenizer, **weights_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def add_weights(rows, tokenizer, *, value=None, seed: int = 0, prompt_format="plain", max_prompt_length=256,
                max_length=512):
    """Per-token rejected weights lined up with encode_pair, as the weights stage writes them (constant or random)."""
    from adpo.data.tokenize import encode_pair

    rng = random.Random(seed)
    out = []
    for r in rows:
        enc = encode_pair(tokenizer, r["prompt"], r["rejected"], prompt_format=prompt_format,
                          max_prompt_length=max_prompt_length, max_length=max_length)
        w = [value if value is not None else rng.random() for _ in enc.response_ids]
        out.append({**r, "rejected_weights": w, "weights_tokenizer": str(tokenizer.name_or_path)})
    return out


def stage_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT", "WANDB_SERVICE")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_SILENT="true",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def train_overrides(root: Path, model_dir: Path, pairs_dir: Path, out: Path, *extra: str) -> list[str]:
    return [f"paths.root={root}", f"model.name_or_path={model_dir}", f"input_dir={pairs_dir}", f"output_dir={out}",
            "train=tiny", "deepspeed=zero2", "progress=false", "wandb=disabled", *extra]


def run_train(overrides: list[str], *, nproc: int = 1, env: dict | None = None, timeout: int = 600,
              check: bool = True) -> subprocess.CompletedProcess:
    """The train stage through its real command line: bare `python -m` for one process, torch.distributed.run else."""
    if nproc == 1:
        cmd = [PYTHON, "-m", "adpo.train", *overrides]
    else:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "adpo.train", *overrides]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env or stage_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def load_state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


# --- wandb's offline run file (.wandb): a LevelDB-style log of protobuf Records ---------------------------------
_BLOCK, _HEADER = 32768, 7


def read_wandb_records(path: Path):
    """Every Record in a run-*.wandb file (the format wandb's sync reads: 7-byte file header, 32 KiB blocks of
    chunks with a crc32/length/type header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    magic, _, _version = struct.unpack("<4sHB", data[:7])
    assert magic == b":W&B", magic
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run_dir: Path) -> list[dict]:
    """The rows logged with run.log(), read back from an offline run directory."""
    rows = []
    for file in sorted(run_dir.glob("run-*.wandb")):
        for record in read_wandb_records(file):
            if record.WhichOneof("record_type") == "history":
                row = {}
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    row[key] = json.loads(item.value_json)
                rows.append(row)
    return rows
