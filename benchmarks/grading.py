"""Grading throughput (answers graded per second) with 0, 1 and 2 worker processes, and the worst-case time of
adversarial outputs.

    .venv/bin/python benchmarks/grading.py [--reps 3 --timeout 5 --data ../shared/data] [--quick]

Workloads (real data from ../shared/data, or $ADPO_SHARED_DATA):
  math500-correct  the 500 MATH-500 reference solutions against their own gold answers (most match after string
                   normalisation; the rest go through math-verify)
  math500-wrong    the same solutions against the gold of the next problem: every item goes through math-verify
  gsm8k-test       the 1319 GSM8K test solutions against their golds (extraction + exact numeric comparison)
For each workload and worker count, a Grader is started and warmed up outside the timing; each repetition times one
grade_batch call over the whole workload. Reported: median and min-max answers/second over the repetitions.
Adversarial: each pathological output alone through a fresh 1-worker Grader with the given hard deadline (timing
includes starting the worker), once with math-verify's own alarm on (default) and once with it set past the
deadline so that only killing the worker can stop it. Reported: seconds per output; the worst is the bound to check
(about the deadline plus start-up).
Results: a table on stdout, benchmarks/out/grading.{json,md}. Set OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness import Timer, parse_args, print_environment, save_json, spread

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(REPO / "src"))

from adpo.data.loaders import read_jsonl_problems  # noqa: E402
from adpo.grading import Grader  # noqa: E402
from adpo.grading.adversarial import ADVERSARIAL_OUTPUTS  # noqa: E402

QUICK = {"reps": 1, "workers": "0,2", "timeout": 3.0}


def workloads(data: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    math = read_jsonl_problems(data / "math500" / "test.jsonl", "math", "test")
    gsm = read_jsonl_problems(data / "gsm8k" / "test.jsonl", "gsm8k", "test")
    sols = [p.solution for p in math]
    return {
        "math500-correct": ("math", sols, [p.gold for p in math]),
        "math500-wrong": ("math", sols, [p.gold for p in math[1:] + math[:1]]),
        "gsm8k-test": ("gsm8k", [p.solution for p in gsm], [p.gold for p in gsm]),
    }


def throughput(name, dataset, texts, golds, workers, reps, timeout):
    with Grader(workers=workers, timeout_s=timeout) as grader:
        grader.grade_batch(dataset, texts[:8], golds[:8])  # start and warm the workers
        rates, correct = [], None
        for _ in range(reps):
            with Timer() as t:
                grades = grader.grade_batch(dataset, texts, golds)
            rates.append(len(texts) / t.wall)
            correct = sum(g.correct for g in grades)
    rate = spread(rates)
    row = dict(workload=name, workers=workers, items=len(texts), correct=correct,
               median=rate["median"], min=rate["min"], max=rate["max"])
    print(f"{name:16} workers={workers}  {row['median']:8.1f} answers/s  (min {row['min']:.1f}, max "
          f"{row['max']:.1f}; {correct}/{len(texts)} correct)", flush=True)
    return row


def adversarial(timeout: float) -> list[dict]:
    rows = []
    for soft in ("math-verify alarm on", "hard kill only"):
        for name, text in ADVERSARIAL_OUTPUTS.items():
            for dataset in ("gsm8k", "math"):
                kwargs = {} if soft.endswith("on") else {"soft_timeout_s": int(timeout * 10)}
                with Timer() as t, Grader(workers=1, timeout_s=timeout, **kwargs) as grader:
                    grade = grader.grade_batch(dataset, [text], ["5"])[0]
                rows.append(dict(case=name, dataset=dataset, mode=soft, seconds=t.wall, correct=grade.correct,
                                 error=grade.error))
                print(f"{soft:21} {name:24} {dataset:6} {t.wall:6.2f} s  error={grade.error}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=5.0, help="hard deadline per item, seconds")
    parser.add_argument("--workers", default="0,1,2", help="worker counts to compare (0: in-process)")
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("ADPO_SHARED_DATA", REPO.parent / "shared" / "data")))
    args = parse_args(parser, QUICK)
    environment = print_environment()
    rows = []
    for name, (dataset, texts, golds) in workloads(args.data).items():
        for workers in [int(w) for w in args.workers.split(",")]:
            rows.append(throughput(name, dataset, texts, golds, workers, args.reps, args.timeout))
    adv = adversarial(args.timeout)
    worst = max(adv, key=lambda r: r["seconds"])
    print(f"worst adversarial case: {worst['case']} ({worst['dataset']}, {worst['mode']}): {worst['seconds']:.2f} s "
          f"with a {args.timeout:g} s deadline")
    result = dict(environment=environment, omp_threads=os.environ.get("OMP_NUM_THREADS"), timeout_s=args.timeout,
                  reps=args.reps, throughput=rows, adversarial=adv, worst=worst)
    save_json(OUT / "grading.json", result)
    lines = ["| workload | workers | answers/s (median) | min | max | correct |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['workers']} | {r['median']:.1f} | {r['min']:.1f} | {r['max']:.1f} | "
              f"{r['correct']}/{r['items']} |" for r in rows]
    lines += ["", f"Adversarial outputs, {args.timeout:g} s deadline, one fresh worker each:", "",
              "| case | dataset | mode | seconds | error |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['dataset']} | {r['mode']} | {r['seconds']:.2f} | {r['error'] or ''} |" for r in adv]
    (OUT / "grading.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
