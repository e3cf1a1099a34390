"""Issue 10, outputs that cannot collide: a stage never deletes or overwrites work made under a different config.

It stops with OutputConflict, whose message names the directory and the keys that differ (`key: old -> new`), and
the work stays on disk byte for byte. The same config still resumes, and keys outside what the work was made for
(wandb, progress, bookkeeping) never conflict. Real stage runs on the tests' tiny models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adpo.config import compose
from adpo.config_diff import OutputConflict, shorten
from adpo.data.records import write_problems as write_problem_records
from adpo.io import atomic_write_jsonl
from test_eval import COMMON as EVAL_COMMON, problems as eval_problems
from test_sample_stage import overrides as sample_overrides, write_problems
from test_sft import write_data as write_sft_data
from test_weights import stage_overrides as weights_overrides, toy_samples
from train_helpers import run_train, train_overrides, write_pairs

# Small enough to run in seconds on one core: 2 completions of 8 tokens per question, 2 questions per shard.
FAST_SAMPLING = ("sampling.n=2", "sampling.max_tokens=8", "sampling.shard_size=2")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def differs(refused: pytest.ExceptionInfo, key: str, old, new) -> bool:
    """The message has the line `key: old -> new` (None: the key is absent on that side)."""
    old, new = ("(none)" if v is None else shorten(v) for v in (old, new))
    return f"  {key}: {old} -> {new}\n" in str(refused.value)


def shards(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: content for name, content in files.items() if Path(name).name.startswith("shard-")}


def mark_killed(out: Path, missing_shard: Path) -> None:
    """What a SIGKILL before the last shard leaves: the other shards and a 'running' manifest."""
    missing_shard.unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))


# --------------------------------------------------------------------------------------------------------- sample

def sample_cfg(root: Path, model: Path, *extra: str):
    return compose("sample", sample_overrides(root, model, *FAST_SAMPLING, *extra))


@pytest.fixture
def sampled(tmp_path, tiny_model_dir) -> Path:
    from adpo_data_prep import sample

    write_problems(tmp_path, 4)
    sample.run(sample_cfg(tmp_path, tiny_model_dir))
    return tmp_path


def test_sample_refuses_a_finished_run_of_another_model(sampled, tiny_model_dir):
    from adpo_data_prep import sample

    out = sampled / "samples"
    before = snapshot(out)
    other = shutil.copytree(tiny_model_dir, sampled / "model_b")
    with pytest.raises(OutputConflict) as refused:
        sample.run(sample_cfg(sampled, other))
    assert differs(refused, "model.name_or_path", str(tiny_model_dir), str(other))
    assert str(out) in str(refused.value) and "paths.samples=" in str(refused.value)
    assert snapshot(out) == before


def test_sample_keeps_partial_shards_of_another_temperature_then_resumes_its_own(sampled, tiny_model_dir):
    from adpo_data_prep import sample

    out = sampled / "samples"
    finished = snapshot(out)
    mark_killed(out, out / "shard-00001.jsonl")
    killed = snapshot(out)
    first_shard = (out / "shard-00000.jsonl").stat().st_mtime_ns
    for layer in ("manifest", "shards"):  # caught by the running manifest; without it, by the shards' own plan
        with pytest.raises(OutputConflict) as refused:
            sample.run(sample_cfg(sampled, tiny_model_dir, "sampling.temperature=0.7"))
        assert differs(refused, "sampling.temperature", 1.0, 0.7), layer
        assert snapshot(out) == killed
        if layer == "manifest":
            (out / "manifest.json").unlink()
            killed = snapshot(out)

    # The same config resumes (max_problems, outside the shards' fingerprint, names the same 4 problems).
    sample.run(sample_cfg(sampled, tiny_model_dir, "sampling.max_problems=4", "progress=true"))
    assert (out / "shard-00000.jsonl").stat().st_mtime_ns == first_shard
    assert shards(snapshot(out)) == shards(finished)


def test_sample_refuses_shards_of_other_problems(sampled, tiny_model_dir):
    from adpo_data_prep import sample

    out = sampled / "samples"
    (out / "manifest.json").unlink()  # only the shards' plan can tell
    before = snapshot(out)
    with pytest.raises(OutputConflict) as refused:
        sample.run(sample_cfg(sampled, tiny_model_dir, "sampling.max_problems=2"))
    assert differs(refused, "items.count", 4, 2)
    assert snapshot(out) == before


# ----------------------------------------------------------------------------------------------------------- eval

def eval_cfg(root: Path, model: Path, *extra: str):
    return compose("eval", [f"paths.root={root}", f"model_dir={model}", f"data_dir={root / 'data'}", *EVAL_COMMON,
                            "generation=hf", "wandb=disabled", "eval.max_new_tokens=8", "eval.shard_size=4", *extra])


def test_eval_refuses_predictions_of_another_model_or_protocol_and_resumes_its_own(tmp_path, tiny_model_dir):
    from adpo_eval import evaluate

    write_problem_records(tmp_path / "data" / "test.jsonl", eval_problems())
    out = evaluate.run(eval_cfg(tmp_path, tiny_model_dir))
    finished = snapshot(out)
    other = shutil.copytree(tiny_model_dir, tmp_path / "model_b")
    with pytest.raises(OutputConflict) as refused:
        evaluate.run(eval_cfg(tmp_path, other))
    assert differs(refused, f"inputs[{other}]", None, f"name:{other}")  # the model is an input, named by its path
    with pytest.raises(OutputConflict) as refused:
        evaluate.run(eval_cfg(tmp_path, tiny_model_dir, "eval.num_shots=4"))
    assert differs(refused, "eval.num_shots", 2, 4)
    assert snapshot(out) == finished

    # Killed mid-run, then rerun with the same protocol (other display settings): it resumes.
    mark_killed(out, out / "shards" / "shard-00002.jsonl")
    (out / "predictions.jsonl").unlink()
    evaluate.run(eval_cfg(tmp_path, tiny_model_dir, "progress=true", "eval.wandb_table=false"))
    assert shards(snapshot(out)) == shards(finished)
    assert (out / "predictions.jsonl").read_bytes() == finished["predictions.jsonl"]


# ---------------------------------------------------------------------------------------------------------- train

@pytest.mark.slow
def test_train_refuses_a_run_of_another_beta_and_keeps_its_checkpoints(tmp_path, tiny_model_dir):
    from adpo import train

    pairs_dir = tmp_path / "pairs"
    write_pairs(pairs_dir / "pairs.jsonl", n=4, seed=0)
    out = tmp_path / "run"
    base = train_overrides(tmp_path, tiny_model_dir, pairs_dir, out, "train.max_steps=2", "train.save_every=1",
                           "train.micro_batch_size=2", "train.gradient_accumulation_steps=1")
    run_train(base)
    beta = compose("train", base).method.beta
    finished = snapshot(out)
    with pytest.raises(OutputConflict) as refused:  # finished: its manifest says what it was made under
        train.run(compose("train", [*base, "method.beta=0.5"]))
    assert differs(refused, "method.beta", beta, 0.5) and "paths.train=" in str(refused.value)
    assert snapshot(out) == finished

    # Killed after its last checkpoint, before the manifest: the checkpoints say it, even when told not to resume.
    (out / "manifest.json").unlink()
    killed = snapshot(out)
    with pytest.raises(OutputConflict) as refused:
        train.run(compose("train", [*base, "method.beta=0.5", "train.resume=false"]))
    assert differs(refused, "method.beta", beta, 0.5) and str(out / "checkpoints") in str(refused.value)
    assert snapshot(out) == killed

    # The same config, with other bookkeeping (log and save intervals), resumes.
    resumed = run_train([*base, "train.log_every=2", "train.save_every=2"])
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


# ------------------------------------------------------------------------------------------------------------ sft

@pytest.mark.slow
def test_sft_refuses_a_checkpoint_or_model_of_another_config(tmp_path):
    from adpo_data_prep import sft

    tiny = ["sft.hidden_size=32", "sft.num_layers=1", "sft.num_heads=2", "sft.intermediate_size=64",
            "sft.vocab_size=300", "sft.batch_size=8", "sft.warmup_steps=2", "sft.steps=20", "sft.checkpoint_every=10",
            "sft.eval_problems=2", "sft.num_threads=1"]

    def cfg(*extra):
        return compose("sft", [f"paths.root={tmp_path}", "progress=false", "wandb=disabled", *tiny, *extra])

    data = write_sft_data(tmp_path, train=64, test=2)
    test_split = (data / "test.jsonl").read_bytes()
    # A run that dies after its checkpoint at step 10 (its test split is missing for the final greedy check).
    (data / "test.jsonl").unlink()
    with pytest.raises(Exception, match="test.jsonl"):
        sft.run(cfg())
    checkpoint = tmp_path / "base_model" / sft.CHECKPOINT
    killed = snapshot(checkpoint)
    with pytest.raises(OutputConflict) as refused:
        sft.run(cfg("sft.lr=1e-3"))
    assert differs(refused, "sft.lr", 3e-3, 1e-3) and "paths.base_model=" in str(refused.value)
    assert snapshot(checkpoint) == killed

    (data / "test.jsonl").write_bytes(test_split)
    sft.run(cfg())  # the same config resumes and finishes
    model = snapshot(tmp_path / "base_model" / "model")
    with pytest.raises(OutputConflict) as refused:
        sft.run(cfg("sft.lr=1e-3"))
    assert differs(refused, "sft.lr", 3e-3, 1e-3) and "a complete sft output" in str(refused.value)
    assert snapshot(tmp_path / "base_model" / "model") == model


# -------------------------------------------------------------------------------------------------------- weights

def test_weights_refuses_adapters_trained_under_another_config(tmp_path, tiny_model_dir):
    from adpo_data_prep import pairs, weights

    atomic_write_jsonl(tmp_path / "samples" / "shard-00000.jsonl", toy_samples()[:16])
    pairs.run(compose("pairs", weights_overrides(tmp_path, tiny_model_dir)))
    base = weights_overrides(tmp_path, tiny_model_dir, "criticality.sft.batch_size=4")
    weights.run(compose("weights", base))
    out = tmp_path / "pairs_weighted"
    lr = compose("weights", base).criticality.sft.lr
    (out / "manifest.json").unlink()  # killed after both adapters: only they can tell
    before = snapshot(out)
    with pytest.raises(OutputConflict) as refused:
        weights.run(compose("weights", [*base, "criticality.sft.lr=0.05"]))
    assert differs(refused, "sft.lr", lr, 0.05) and str(out / "positive") in str(refused.value)
    assert snapshot(out) == before


def test_prepare_and_pairs_keep_outputs_made_from_other_data(tmp_path):
    """Problems or pairs made from other data are never replaced: the stages downstream were made from them."""
    from adpo_data_prep import pairs as pairs_stage
    from adpo_data_prep import prepare as prepare_stage

    root = tmp_path / "run"
    base = [f"paths.root={root}", "data=toy", "data.splits.train=6", "data.splits.test=4", "progress=false"]
    prepare_stage.run(compose("prepare", base))
    data = root / "data"
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    with pytest.raises(OutputConflict) as err:
        prepare_stage.run(compose("prepare", [*base, "data.splits.train=3"]))
    assert "data.splits.train: 6 -> 3" in str(err.value) and "paths.data" in str(err.value)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before

    atomic_write_jsonl(root / "samples" / "shard-00000.jsonl", toy_samples()[:16])
    pairs_stage.run(compose("pairs", base))
    pairs_dir = root / "pairs"
    made = {p.name: p.read_bytes() for p in pairs_dir.iterdir()}
    with pytest.raises(OutputConflict) as err:
        pairs_stage.run(compose("pairs", [*base, "pairing.seed=7"]))
    assert "pairing.seed: 0 -> 7" in str(err.value)
    assert {p.name: p.read_bytes() for p in pairs_dir.iterdir()} == made
