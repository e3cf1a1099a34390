"""A stage's identity covers everything it reads, by construction: its whole config minus the registry's short list
of keys known not to change its output. A key nobody has listed (a new method option, say) reruns the stage."""

from __future__ import annotations

import json
import shutil

import pytest

from adpo.config import compose
from adpo.manifest import identity, is_complete
from adpo.pipeline import Step, is_finished
from adpo.registry import NEVER_HASHED, STAGES
from train_helpers import run_train, train_overrides, write_pairs


def test_identity_drops_only_the_named_keys():
    cfg = compose("train", ["+method.loss_type=ipo", "+train.new_option=3"])
    key = identity(cfg, "train")["config"]
    assert key["method"]["loss_type"] == "ipo" and key["train"]["new_option"] == 3
    assert not set(NEVER_HASHED) & set(key)
    assert "pairs_dir" not in key["method"] and "sampling" not in key and "model" in key


def test_identity_never_resolves_what_it_drops():
    # A path only Hydra's runtime can resolve (sweep configs use ${hydra:...}) must not break the hash.
    cfg = compose("sample", ["model=llama3_8b", "paths.root=outputs/${hydra:runtime.choices.data}"])
    assert identity(cfg, "sample")["stage"] == "sample"


@pytest.mark.parametrize("stage", [s.name for s in STAGES])
def test_every_stage_hashes_an_unknown_key_of_a_group_it_reads(stage):
    group = {"prepare": "data", "sft": "sft", "sample": "sampling", "pairs": "pairing", "weights": "criticality",
             "train": "method", "eval": "eval", "aggregate": "aggregate",
             "analyze": "analyze", "trajectory": "trajectory"}[stage]
    config = next(s.config for s in STAGES if s.name == stage)
    before = identity(compose(config), stage)
    after = identity(compose(config, [f"+{group}.brand_new_option=1"]), stage)
    assert before != after


def test_a_new_training_option_keeps_sampling_and_pairs_finished():
    for stage in ("prepare", "sample", "pairs"):
        config = next(s.config for s in STAGES if s.name == stage)
        assert identity(compose(config), stage) == identity(
            compose(config, ["+method.loss_type=ipo", "+train.new_option=1", "deepspeed=zero3", "wandb=online"]),
            stage), stage


@pytest.mark.slow
def test_unknown_method_or_train_key_reruns_the_train_stage(tmp_path, tiny_model_dir):
    pairs_dir = tmp_path / "pairs"
    write_pairs(pairs_dir / "pairs.jsonl", n=4, seed=0)
    out = tmp_path / "run"
    base = train_overrides(tmp_path, tiny_model_dir, pairs_dir, out, "train.max_steps=1", "train.micro_batch_size=2",
                           "train.gradient_accumulation_steps=1")
    run_train(base)
    finished = json.loads((out / "manifest.json").read_text())
    assert finished["status"] == "complete"

    def step(*extra):
        return Step("train", base + list(extra), config=compose("train", base + list(extra)))

    assert is_finished(step())
    assert is_finished(step("progress=true", "wandb=offline"))  # how to run, not what
    for extra in ("+method.loss_type=ipo", "+train.label_smoothing=0.1"):
        assert not is_finished(step(extra)), extra
        assert not is_complete(out, identity(compose("train", base + [extra]), "train"),
                               list(finished["inputs"])), extra
    # And the stage itself agrees: it does not skip; it refuses to resume or overwrite the other configuration's run,
    # naming the key (issue 10: train.resume=false used to train anew over it)...
    for extra in ([], ["train.resume=false"]):
        refused = run_train(base + ["+method.loss_type=ipo", *extra], check=False)
        assert refused.returncode != 0 and "method.loss_type: (none) -> ipo" in refused.stderr, extra
    assert json.loads((out / "manifest.json").read_text()) == finished
    # ... and trains anew once that run is deleted.
    shutil.rmtree(out)
    run_train(base + ["+method.loss_type=ipo"])
    assert json.loads((out / "manifest.json").read_text())["config_hash"] != finished["config_hash"]
