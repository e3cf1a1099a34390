"""Cross-check of the eval stage against lm-evaluation-harness (PyPI `lm-eval`), GSM8K-format tasks.

Two comparisons, both per problem:

1. generate: the same model and problems through our eval path (adpo.generation.GradedGeneration with the `hf`
   backend: prompt, greedy generation, stop strings, adpo.grading) and through lm-eval (`lm_eval.simple_evaluate`
   with an `HFLM` on the same local directory, and a task YAML generated into a temp dir in the `gsm8k_cot` style:
   our exemplars as `fewshot_config.samples`, our prompt layout, the same max tokens and stop string). It checks
   that the prompts and the generations are identical, then compares our extracted answer and correctness with
   lm-eval's filters. A spec ending "/stock" runs lm-eval in gsm8k_cot's own layout instead ("Q: {q}\nA:", a " "
   before each exemplar's answer, stop at "Q:"): what the prompt format alone changes for the same model.
2. replay: given texts (GSM8K's own worked solutions, the same rewritten in the CoT exemplars' "The answer is N."
   style, GSM8K's reasoning with the right answer in twelve common model endings (MODEL_STYLES), an eval stage's
   predictions.jsonl) are fed through the same lm-eval task by a model that answers each
   prompt with its text: an extraction-only comparison on real GSM8K text, no generation.

lm-eval's filters are the installed package's own: `strict-match` and `flexible-extract` of `gsm8k-cot.yaml`
("The answer is N." / the last number), and `strict-match` of `gsm8k.yaml` ("#### N", the format of GSM8K's
solutions and of the quickstart's toy model), reported as `hash-strict-match`. Its metric is `exact_match` after
`regexes_to_ignore` (commas, "$", everything up to "#### ", a final "."): a string comparison, where ours compares
numbers.

    python -m adpo_eval.lm_eval_crosscheck                                     # the quickstart base model, toy test
    python -m adpo_eval.lm_eval_crosscheck --model-dir M --data test.jsonl --limit 50 --prompts few_shot:4
    python -m adpo_eval.lm_eval_crosscheck --replay-gsm8k ../shared/data/gsm8k/test.jsonl --no-generate

Writes <out>/{generate,replay_*}.csv (one row per problem), <out>/summary.csv and <out>/README.md (the tables).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from adpo.data.prompts import build_prompt, exemplars, stop_sequences
from adpo.data.records import Problem, read_problems
from adpo.grading.core import grade
from adpo.grading.extract import parse_number
from adpo.io import iter_jsonl, require_field

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "outputs/quickstart/toy/tiny/base_model/model"
DEFAULT_DATA = REPO_ROOT / "outputs/quickstart/toy/tiny/data/test.jsonl"
DEFAULT_OUT = REPO_ROOT / "results/lm_eval_crosscheck"
TASK = "adpo_crosscheck_gsm8k"
FILTERS = ("strict-match", "flexible-extract", "hash-strict-match")
INVALID = "[invalid]"  # lm-eval's RegexFilter fallback when its pattern does not match


def lm_eval_available() -> str | None:
    """None when lm-eval imports, else why not."""
    try:
        import lm_eval  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"lm-eval is not importable ({type(exc).__name__}: {exc}); pip install -e '.[crosscheck]'"
    return None


# ------------------------------------------------------------------------------------------------ the lm-eval task


def _installed_task_yaml(name: str) -> dict[str, Any]:
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / name
    return yaml.safe_load(path.read_text())


def lm_eval_filters() -> list[dict[str, Any]]:
    """The installed lm-eval's GSM8K filters: gsm8k-cot's strict-match and flexible-extract, gsm8k's strict-match."""
    cot = {f["name"]: f for f in _installed_task_yaml("gsm8k-cot.yaml")["filter_list"]}
    plain = {f["name"]: f for f in _installed_task_yaml("gsm8k.yaml")["filter_list"]}
    return [cot["strict-match"], cot["flexible-extract"], {**plain["strict-match"], "name": "hash-strict-match"}]


def write_task(task_dir: Path, problems: Sequence[Problem], *, prompt_style: str, num_shots: int | None,
               max_gen_toks: int, stop: Sequence[str], layout: str = "ours") -> Path:
    """A local-file lm-eval task in the gsm8k_cot style that renders exactly our plain prompts (layout "ours"), or
    gsm8k_cot's own layout and stop strings (layout "stock") with the same exemplars.

    Our prompt is "Question: {q}\\nAnswer:" preceded (few-shot) by exemplars "Question: ...\\nAnswer: ...\\n\\n".
    lm-eval builds "<doc_to_text(shot)><target_delimiter><target><fewshot_delimiter>" per shot, then
    doc_to_text(doc): so doc_to_text ends in "Answer:", target_delimiter is " " and fewshot_delimiter "\\n\\n", as in
    gsm8k_cot itself ("Q: {q}\\nA:" with target_delimiter " ", stopping at "Q:").
    """
    import yaml

    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / "test.jsonl"
    with data.open("w") as fh:
        for p in problems:
            fh.write(json.dumps({"id": p.id, "question": p.question, "answer": p.gold}) + "\n")
    cot = _installed_task_yaml("gsm8k-cot.yaml")
    shots = exemplars("gsm8k")[: (len(exemplars("gsm8k")) if num_shots is None else num_shots)]
    n_shots = len(shots) if prompt_style == "few_shot" else 0
    config = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(task_dir / "hf_cache")},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:" if layout == "ours" else cot["doc_to_text"],
        "doc_to_target": "{{answer if answer is defined else target}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "num_fewshot": n_shots,
        "fewshot_config": {"sampler": "first_n",
                           "samples": [{"question": q, "target": a} for q, a in shots]},
        "generation_kwargs": {"until": list(stop) if layout == "ours" else cot["generation_kwargs"]["until"],
                              "do_sample": False, "temperature": 0.0,
                              "max_gen_toks": int(max_gen_toks)},
        "filter_list": lm_eval_filters(),
        "metric_list": cot["metric_list"],
        "repeats": 1,
        "metadata": {"version": 1.0},
    }
    path = task_dir / f"{TASK}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def run_lm_eval(task_dir: Path, model: Any) -> dict[str, dict[str, Any]]:
    """simple_evaluate on the generated task; per document id: context, raw response, and per filter the filtered
    response and exact_match."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=model, tasks=[TASK], task_manager=TaskManager(include_path=str(task_dir)),
                              log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    per_doc: dict[str, dict[str, Any]] = {}
    for sample in results["samples"][TASK]:
        row = per_doc.setdefault(sample["doc"]["id"], {"context": sample["arguments"][0][0],
                                                        "gen_kwargs": sample["arguments"][0][1],
                                                        "response": sample["resps"][0][0], "filters": {}})
        row["filters"][sample["filter"]] = (sample["filtered_resps"][0], bool(sample["exact_match"]))
    return per_doc


def _hf_model(model_dir: str | Path, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    # float32 on CPU as our hf backend; add_bos_token=None: the tokenizer's default, as our plain prompts.
    return HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=batch_size)


def _replay_model(outputs: dict[str, str]):
    """An lm-eval LM that answers each prompt with a given text (extraction-only comparison)."""
    from lm_eval.api.model import LM

    class Replay(LM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            return [outputs[r.args[0]] for r in requests]

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

    return Replay()


# ------------------------------------------------------------------------------------------------ the comparison


@dataclass
class Row:
    id: str
    gold: str
    output: str
    ours: str | None
    ours_correct: bool
    lm: dict[str, tuple[str, bool]]  # filter -> (filtered response, exact_match)
    prompt_identical: bool | None = None
    generation_identical: bool | None = None
    lm_output: str | None = None
    why: dict[str, str] = field(default_factory=dict)
    tag: str = ""  # the model style of a replayed text


def _num(text: str | None):
    if text is None:
        return None
    return parse_number(re.sub(r"[$,]", "", text).rstrip("."))


def explain(row: Row, name: str) -> str:
    """Why lm-eval's filter `name` and our grading agree or differ on one output (a short category)."""
    lm_text, lm_ok = row.lm[name]
    if row.generation_identical is False and lm_ok != row.ours_correct:
        return "different generations (the comparison is then not of extraction)"
    if lm_ok == row.ours_correct:
        if lm_ok:
            return "agree: both correct"
        if lm_text == INVALID and row.ours is None:
            return "agree: both found no answer"
        return "agree: both wrong"
    lm_value, ours_value = _num(lm_text), _num(row.ours)
    if lm_text == INVALID:
        pattern = {"strict-match": "'The answer is N.'", "hash-strict-match": "'#### N'"}.get(name, "a number")
        return f"no match for lm-eval's regex ({pattern}); ours reads the stated answer"
    if lm_value is None:
        return "lm-eval's match is not a number (e.g. '..' or '$,')"
    if lm_value == ours_value:
        return "same number, but lm-eval compares strings ('18.00' != '18'), ours numbers"
    if name == "flexible-extract":
        return "different number: flexible-extract takes the last number in the text, ours the stated answer"
    if ours_value is not None:
        return ("different number: lm-eval takes the first match right after its anchor, ours the last stated "
                "answer (the result after '=')")
    return "unexplained"


def compare(problems: Sequence[Problem], outputs: dict[str, str], lm: dict[str, dict[str, Any]],
            prompts: dict[str, str] | None = None, generated: bool = True) -> list[Row]:
    rows = []
    for p in problems:
        g = grade("gsm8k", outputs[p.id], p.gold)
        got = lm[p.id]
        row = Row(p.id, p.gold, outputs[p.id], g.extracted, g.correct, got["filters"], lm_output=got["response"])
        if prompts is not None:
            row.prompt_identical = prompts[p.id] == got["context"]
            row.generation_identical = outputs[p.id] == got["response"] if generated else None
        row.why = {name: explain(row, name) for name in FILTERS}
        rows.append(row)
    return rows


def summarize(rows: Sequence[Row], label: str) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {"comparison": label, "problems": n,
                           "ours_accuracy": sum(r.ours_correct for r in rows) / n if n else 0.0}
    if rows and rows[0].prompt_identical is not None:
        out["prompts_identical"] = sum(bool(r.prompt_identical) for r in rows)
    if rows and rows[0].generation_identical is not None:
        out["generations_identical"] = sum(bool(r.generation_identical) for r in rows)
    for name in FILTERS:
        out[f"{name}_accuracy"] = sum(r.lm[name][1] for r in rows) / n if n else 0.0
        out[f"{name}_agreement"] = sum(r.lm[name][1] == r.ours_correct for r in rows)
        out[f"{name}_differences"] = dict(Counter(r.why[name] for r in rows if not r.why[name].startswith("agree")))
    if any(r.tag for r in rows):
        by_tag: dict[str, dict[str, int]] = {}
        for r in rows:
            t = by_tag.setdefault(r.tag, {"n": 0, "ours": 0, **{n: 0 for n in FILTERS}})
            t["n"] += 1
            t["ours"] += r.ours_correct
            for n in FILTERS:
                t[n] += r.lm[n][1]
        out["by_tag"] = by_tag
    return out


# ------------------------------------------------------------------------------------------------ the two runs


def generate_both(model_dir: str | Path, problems: Sequence[Problem], *, prompt_style: str, num_shots: int | None,
                  max_new_tokens: int, batch_size: int, lm_batch_size: int, work: Path,
                  layout: str = "ours") -> tuple[list[Row], dict]:
    """Our eval path and lm-eval's HFLM on the same problems; rows and timings. layout "stock": lm-eval prompts in
    gsm8k_cot's own layout ("Q: ...\nA:", stop at "Q:"), to measure what the prompt format alone changes."""
    from adpo.generation.graded import GradedGeneration

    stop = stop_sequences("gsm8k")
    timings = {}
    start = time.perf_counter()
    gen_cfg = {"backend": "hf", "dtype": "float32", "batch_size": batch_size, "device": "cpu",
               "max_model_len": None, "threads": None, "trust_remote_code": False}
    with GradedGeneration(gen_cfg, model_dir, "plain", prompt_style=prompt_style, num_shots=num_shots, n=1,
                          temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, seed=0, grade_workers=0,
                          grade_timeout_s=10.0, stop=stop) as ours:
        graded = ours(problems, 0)
    timings["ours_s"] = round(time.perf_counter() - start, 1)
    outputs = {g.problem.id: g.completions[0].text for g in graded}
    prompts = {g.problem.id: g.prompt for g in graded}
    task_dir = work / "generate"
    write_task(task_dir, problems, prompt_style=prompt_style, num_shots=num_shots, max_gen_toks=max_new_tokens,
               stop=stop, layout=layout)
    start = time.perf_counter()
    lm = run_lm_eval(task_dir, _hf_model(model_dir, lm_batch_size))
    timings["lm_eval_s"] = round(time.perf_counter() - start, 1)
    return compare(problems, outputs, lm, prompts), timings


def replay(problems: Sequence[Problem], texts: dict[str, str], *, prompt_style: str, num_shots: int | None,
           work: Path, name: str, tags: dict[str, str] | None = None) -> list[Row]:
    """Given texts through lm-eval's task pipeline (its filters and metric) and through our grading."""
    prompts = {p.id: build_prompt(p, style=prompt_style, num_shots=num_shots) for p in problems}
    if len(set(prompts.values())) != len(prompts):  # the replay model finds each text by its prompt
        raise ValueError("two problems have the same prompt; replay needs distinct questions")
    task_dir = work / name
    write_task(task_dir, problems, prompt_style=prompt_style, num_shots=num_shots, max_gen_toks=16,
               stop=stop_sequences("gsm8k"))
    by_prompt = {prompts[p.id]: texts[p.id] for p in problems}
    lm = run_lm_eval(task_dir, _replay_model(by_prompt))
    rows = compare(problems, texts, lm, prompts, generated=False)
    for r in rows:
        r.tag = (tags or {}).get(r.id, "")
    return rows


# Endings a model might write after GSM8K's own reasoning ("{g}": the gold, "{gc}": with thousands commas, "{gm1}":
# the gold minus 1), one per problem in turn: every one states the right answer, so ours grades each correct.
MODEL_STYLES = (
    "The answer is {g}.",                                       # the CoT exemplars' own ending
    "#### {g}",                                                 # GSM8K's (and the toy model's) ending
    "The answer is ${g}$.",                                     # LaTeX math
    "The answer is \\${gc}.",                                   # an escaped dollar sign and thousands commas
    "The answer is {g} dollars.",                               # a unit after the number
    "Therefore, the answer is \\boxed{{{g}}}.",                 # a boxed answer
    "The final answer is {g}",                                  # no final period
    "So the total is **{g}**.",                                 # markdown bold, no anchor
    "The answer is {g}.00.",                                    # trailing zeros
    "The answer is {gm1} + 1 = {g}.",                           # the sum restated after the anchor
    "The answer is {g}. Check: 3 + 4 = 7.",                     # numbers after the stated answer
    "The answer is {g}.\nQ: A new question with 12345 apples.",  # a run-on next question after one newline
)


def model_style_texts(problems: Sequence[Problem]) -> dict[str, str]:
    """GSM8K's reasoning (without its "#### N" line) ending in MODEL_STYLES[i % len(MODEL_STYLES)] for problem i."""
    texts = {}
    for i, p in enumerate(problems):
        body = p.solution.rpartition("####")[0].rstrip()
        g = int(Fraction(p.gold)) if Fraction(p.gold).denominator == 1 else p.gold
        style = MODEL_STYLES[i % len(MODEL_STYLES)]
        ending = style.format(g=g, gc=f"{g:,}" if isinstance(g, int) else g,
                              gm1=g - 1 if isinstance(g, int) else g)
        texts[p.id] = f"{body} {ending}"
    return texts


def gsm8k_solution_texts(problems: Sequence[Problem], style: str) -> dict[str, str]:
    """GSM8K's worked solutions: as written ("... #### 72") or in the CoT exemplars' style ("... The answer is 72.").

    The "<<48/2=24>>" calculator annotations are kept: they are part of the text a model trained on GSM8K writes.
    """
    texts = {}
    for p in problems:
        body, _, final = p.solution.rpartition("####")
        texts[p.id] = p.solution if style == "hash" else f"{body.rstrip()} The answer is {final.strip()}."
    return texts


def prediction_texts(path: Path) -> tuple[list[Problem], dict[str, str]]:
    """(problems, outputs) of an eval stage's predictions.jsonl (GSM8K rows only)."""
    problems, texts = [], {}
    for lineno, r in iter_jsonl(path, require="predictions"):
        if r.get("dataset", "gsm8k") != "gsm8k":
            continue
        where = f"{path}:{lineno}"
        pid = str(require_field(r, "id", (str, int), where))
        problems.append(Problem(id=pid, dataset="gsm8k", question=require_field(r, "question", str, where),
                                gold=require_field(r, "gold", str, where)))
        texts[pid] = require_field(r, "output", str, where)
    return problems, texts


# ------------------------------------------------------------------------------------------------ reporting

CSV_FIELDS = ["id", "tag", "gold", "ours", "ours_correct", *(f"{n}{s}" for n in FILTERS for s in ("", "_correct", "_why")),
              "prompt_identical", "generation_identical", "output", "lm_output"]


def write_rows(path: Path, rows: Sequence[Row], outputs: bool = True) -> None:
    """One CSV row per problem; outputs=False leaves the text columns empty (GSM8K replays: the texts follow from
    the data file and MODEL_STYLES, and would make the table megabytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, CSV_FIELDS)
        w.writeheader()
        for r in rows:
            rec = {"id": r.id, "tag": r.tag, "gold": r.gold, "ours": r.ours, "ours_correct": int(r.ours_correct),
                   "prompt_identical": "" if r.prompt_identical is None else int(r.prompt_identical),
                   "generation_identical": "" if r.generation_identical is None else int(r.generation_identical),
                   "output": r.output if outputs else "",
                   "lm_output": "" if r.lm_output == r.output or not outputs else r.lm_output}
            for n in FILTERS:
                rec[n], ok = r.lm[n]
                rec[f"{n}_correct"], rec[f"{n}_why"] = int(ok), r.why[n]
            w.writerow(rec)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(summaries: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# lm-evaluation-harness cross-check (GSM8K format)", "",
             "Written by `python -m adpo_eval.lm_eval_crosscheck` (eval/adpo_eval/lm_eval_crosscheck.py).", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", ("| comparison | problems | prompts identical | generations identical | ours | lm strict-match "
              "| lm flexible-extract | lm `####` strict | agree strict | agree flexible | agree `####` |"),
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        n = s["problems"]
        lines.append(
            f"| {s['comparison']} | {n} | {s.get('prompts_identical', '-')} | {s.get('generations_identical', '-')} "
            f"| {_pct(s['ours_accuracy'])} | {_pct(s['strict-match_accuracy'])} "
            f"| {_pct(s['flexible-extract_accuracy'])} | {_pct(s['hash-strict-match_accuracy'])} "
            f"| {s['strict-match_agreement']}/{n} | {s['flexible-extract_agreement']}/{n} "
            f"| {s['hash-strict-match_agreement']}/{n} |")
    for s in summaries:
        if s.get("by_tag"):
            lines += ["", f"### {s['comparison']}: by ending (every text states the right answer)", "",
                      "| ending | n | ours | strict-match | flexible-extract | `####` strict |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for tag, t in s["by_tag"].items():
                shown = tag.format(g="N", gc="N", gm1="N-1")
                shown = shown.replace("\n", "\\n").replace("|", "\\|")
                lines.append(f"| `{shown}` | {t['n']} | {t['ours']} | {t['strict-match']} | "
                             f"{t['flexible-extract']} | {t['hash-strict-match']} |")
    lines += ["", "## Differences (problems where lm-eval's correctness differs from ours), by kind", ""]
    for s in summaries:
        for name in FILTERS:
            for why, count in sorted(s[f"{name}_differences"].items(), key=lambda kv: -kv[1]):
                lines.append(f"- {s['comparison']}, {name}: {count} x {why}")
    return "\n".join(lines) + "\n"


def write_summary_csv(path: Path, summaries: Sequence[dict[str, Any]]) -> None:
    keys = ["comparison", "problems", "prompts_identical", "generations_identical", "ours_accuracy",
            *(f"{n}_{k}" for n in FILTERS for k in ("accuracy", "agreement"))]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, keys, extrasaction="ignore")
        w.writeheader()
        for s in summaries:
            w.writerow({k: s.get(k, "") for k in keys})


# ------------------------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None, *, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=str(DEFAULT_MODEL),
                    help="a local HF model directory (default: the quickstart's SFT-trained toy base model)")
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="problems: a prepare-stage test.jsonl (Problem records; default: the quickstart's toy test)")
    ap.add_argument("--limit", type=int, default=100, help="first N problems (default 100; 0 = all)")
    ap.add_argument("--prompts", nargs="+", default=["zero_shot", "zero_shot/stock", "few_shot:2@20"],
                    help="prompt styles to generate with, each STYLE[:K][/stock][@N]: zero_shot (the toy model's "
                         "training prompt, the quickstart's eval) or few_shot (K exemplars; the toy model's 1024 "
                         "positions hold 4 of the 8); /stock: lm-eval in gsm8k_cot's own layout ('Q: ...\\nA:', "
                         "stop at 'Q:') instead of ours; on the first N problems (default: --limit); default: zero_shot "
                         "zero_shot/stock few_shot:2@20")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="the quickstart's eval.max_new_tokens")
    ap.add_argument("--batch-size", type=int, default=32, help="our hf backend's batch (the eval stage's default)")
    ap.add_argument("--lm-batch-size", type=int, default=1, help="lm-eval HFLM batch size")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: a tiny model gains nothing from more, and spinning threads "
                         "crawl on a busy machine); 0 = torch's default")
    ap.add_argument("--no-generate", action="store_true", help="skip the generation comparison")
    ap.add_argument("--replay-gsm8k", default=str(REPO_ROOT.parent / "shared/data/gsm8k/test.jsonl"),
                    help="GSM8K test in the hub layout whose worked solutions are replayed ('' = skip)")
    ap.add_argument("--replay-limit", type=int, default=0, help="first N GSM8K problems to replay (0 = all)")
    ap.add_argument("--replay-predictions", action="append", default=[],
                    help="an eval stage's predictions.jsonl to replay (repeatable)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="where the tables go ('' = print only)")
    args = ap.parse_args(argv)

    reason = lm_eval_available()
    if reason:
        raise SystemExit(reason)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import lm_eval
    import torch

    previous = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, echo, lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?")
    finally:
        torch.set_num_threads(previous)


def _run(args: argparse.Namespace, echo: Callable[[str], None], version: str) -> list[dict[str, Any]]:
    out = Path(args.out) if args.out else None
    summaries: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"lm-eval": version,
                            "filters": "; ".join(f"{f['name']}: `{f['filter'][0]['regex_pattern']}`"
                                                 for f in lm_eval_filters())}
    all_rows: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="adpo_lm_eval_") as tmp:
        work = Path(tmp)
        if not args.no_generate:
            model_dir, data = Path(args.model_dir), Path(args.data)
            for path in (model_dir, data):
                if not path.exists():
                    raise SystemExit(f"{path} not found (run `adpo-pipeline experiment=quickstart` first, or pass "
                                     "--model-dir/--data, or --no-generate)")
            problems = read_problems(data)
            problems = [p for p in problems if p.dataset == "gsm8k"][: args.limit or None]
            for full_spec in args.prompts:
                spec, _, n = full_spec.partition("@")
                spec, _, layout = spec.partition("/")
                if layout not in ("", "stock"):
                    raise SystemExit(f"--prompts {full_spec}: the layout after '/' can only be 'stock'")
                style, _, k = spec.partition(":")
                num_shots = int(k) if k else None
                some = problems[: int(n)] if n else problems
                rows, timings = generate_both(model_dir, some, prompt_style=style, num_shots=num_shots,
                                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                              lm_batch_size=args.lm_batch_size, layout=layout or "ours",
                                              work=work / f"{spec.replace(':', '_')}{layout}")
                key = f"generate_{spec.replace(':', '_')}" + (f"_{layout}" if layout else "")
                all_rows[key] = rows
                label = f"generate: {spec}" + (" (lm-eval in gsm8k_cot's own layout)" if layout else "")
                summaries.append(summarize(rows, label))
                meta[key] = (f"model `{_short(model_dir)}`, data `{_short(data)}` (first {len(some)}), {spec}, "
                             f"greedy, max_new_tokens={args.max_new_tokens}, stop={stop_sequences('gsm8k')!r}; "
                             f"ours {timings['ours_s']} s (hf backend, batch {args.batch_size}), lm-eval "
                             f"{timings['lm_eval_s']} s (HFLM, batch {args.lm_batch_size})")
        if args.replay_gsm8k:
            path = Path(args.replay_gsm8k)
            if path.exists():
                from adpo.data.loaders import read_jsonl_problems

                gsm = read_jsonl_problems(path, "gsm8k", "test", limit=args.replay_limit or None)
                for style in ("hash", "cot"):
                    rows = replay(gsm, gsm8k_solution_texts(gsm, style), prompt_style="few_shot", num_shots=None,
                                  work=work, name=f"replay_{style}")
                    all_rows[f"replay_gsm8k_{style}"] = rows
                    what = "'#### N' (as written)" if style == "hash" else "'The answer is N.' (CoT style)"
                    summaries.append(summarize(rows, f"replay: GSM8K test solutions ending {what}"))
                tags = {p.id: MODEL_STYLES[i % len(MODEL_STYLES)] for i, p in enumerate(gsm)}
                rows = replay(gsm, model_style_texts(gsm), prompt_style="few_shot", num_shots=None, work=work,
                              name="replay_styles", tags=tags)
                all_rows["replay_gsm8k_styles"] = rows
                summaries.append(summarize(rows, "replay: GSM8K reasoning + model-style endings"))
            else:
                echo(f"skipping the GSM8K replay: {path} not found (../shared/data beside the checkout)")
        for i, pred in enumerate(args.replay_predictions):
            problems, texts = prediction_texts(Path(pred))
            rows = replay(problems, texts, prompt_style="zero_shot", num_shots=None, work=work, name=f"pred{i}")
            all_rows[f"replay_predictions_{i}"] = rows
            summaries.append(summarize(rows, f"replay: {_short(Path(pred))}"))

    text = render(summaries, meta)
    echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for key, rows in all_rows.items():
            write_rows(out / f"{key}.csv", rows, outputs=not key.startswith("replay_gsm8k"))
        write_summary_csv(out / "summary.csv", summaries)
        (out / "README.md").write_text(text)
        echo(f"wrote {out}/README.md, summary.csv and " + ", ".join(f"{k}.csv" for k in all_rows))
    return summaries


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main(sys.argv[1:])
