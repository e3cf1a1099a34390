"""The method configs: each composes as it always has on top of conf/method/_base.yaml, and says how tables show it;
a method that exists only as a new config file goes through training's config, evaluation's and every table."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from adpo import registry
from adpo.config import compose, conf_dir, to_container
from adpo.io import atomic_write_json, atomic_write_jsonl
from adpo.manifest import write_manifest
from adpo.training.step import MethodSpec
from adpo_eval import aggregate
from adpo_eval.methods import DISPLAY_KEYS

# What the four methods composed to before they shared a base config: any change here changes what trains.
SHARED = {
    "dpo": {"name": "dpo", "granularity": "sequence", "beta": 0.1, "use_weights": False, "length_mode": "max",
            "reduction": "sum", "segment_loss": "sigmoid", "pairs_dir": "${paths.pairs}"},
    "adpo": {"name": "adpo", "granularity": "token", "beta": 0.1, "use_weights": False, "length_mode": "max",
             "reduction": "sum", "segment_loss": "sigmoid", "pairs_dir": "${paths.pairs}"},
    "cdpo": {"name": "cdpo", "granularity": "sequence", "beta": 0.1, "use_weights": True, "length_mode": "max",
             "reduction": "sum", "segment_loss": "sigmoid", "pairs_dir": "${paths.weighted_pairs}"},
    "cadpo": {"name": "cadpo", "granularity": "token", "beta": 0.1, "use_weights": True, "length_mode": "max",
              "reduction": "sum", "segment_loss": "sigmoid", "pairs_dir": "${paths.weighted_pairs}"},
}
DISPLAY = {
    "dpo": {"label": "DPO", "family": "adpo", "order": 10, "main_granularity": "sequence"},
    "adpo": {"label": "ADPO", "family": "adpo", "order": 20, "main_granularity": "token"},
    "cdpo": {"label": "cDPO", "family": "cadpo", "order": 30, "main_granularity": "sequence"},
    "cadpo": {"label": "cADPO", "family": "cadpo", "order": 40, "main_granularity": "token"},
}
# Keys a method may add without changing the others' identity (not in _base.yaml): make_batch's EOS rule, and the
# defaults of train.schedule and train.length_policy (conf/train/default.yaml reads them with oc.select).
OPTIONAL_KEYS = {"eos_weight", "schedule", "length_policy"}
METHOD_FILES = sorted(p.stem for p in (conf_dir() / "method").glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("method", sorted(SHARED))
def test_method_composes_as_before_plus_its_display_keys(method):
    node = OmegaConf.to_container(compose("train", [f"method={method}"]).method, resolve=False)
    assert node == {**SHARED[method], **DISPLAY[method]}
    resolved = to_container(compose("train", [f"method={method}", "paths.root=/r"]))["method"]["pairs_dir"]
    assert resolved == ("/r/pairs_weighted" if SHARED[method]["use_weights"] else "/r/pairs")


@pytest.mark.parametrize("method", METHOD_FILES)
def test_every_method_config_is_named_after_its_file_and_says_how_tables_show_it(method):
    node = compose("train", [f"method={method}"]).method
    assert node.name == method
    assert {"label", "family", "order", "main_granularity"} <= set(node) <= {*SHARED["dpo"], *DISPLAY_KEYS,
                                                                             *OPTIONAL_KEYS}


IPO = """\
# A method that exists only as this file.
defaults:
  - _base
  - _self_

name: ipo
granularity: sequence
beta: 0.5
label: IPO
family: ipo
order: 15
main_granularity: sequence
paper_name: Identity-PO
"""


def _write_eval_dir(cfg, correct: np.ndarray) -> Path:
    config = to_container(cfg)
    out = Path(config["output_dir"])
    atomic_write_jsonl(out / "predictions.jsonl", [{"id": f"p{i}", "correct": bool(c)} for i, c in enumerate(correct)])
    atomic_write_json(out / "metrics.json", {"accuracy": float(np.mean(correct)), "total": len(correct)})
    write_manifest(out, "eval", config, [])
    return out


def test_a_new_method_config_reaches_training_evaluation_and_every_table(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "method" / "ipo.yaml").write_text(IPO)
    monkeypatch.setenv("ADPO_CONF_DIR", str(conf))
    root = tmp_path / "out"
    common = [f"paths.root={root}", "model.paper_name=Llama-3-8B", "progress=false", "wandb=disabled"]

    train = compose("train", [*common, "method=ipo"])
    assert MethodSpec.from_cfg(train.method).beta == 0.5
    registry.main(["chain", "method=ipo"])
    assert capsys.readouterr().out.split() == ["prepare", "sample", "pairs", "train", "eval"]

    rng = np.random.default_rng(0)
    # The whole GSM8K test set (1319 problems): a part of it would never be put beside the paper's number.
    _write_eval_dir(compose("eval", [*common, "method=adpo", "run_name=base"]), rng.random(1319) < 0.4)
    for method, granularity in [("dpo", "sequence"), ("adpo", "token"), ("ipo", "sequence"), ("ipo", "static:4")]:
        cfg = compose("eval", [*common, f"method={method}", f"method.granularity={granularity}"])
        assert cfg.run_name == f"{method}-{granularity.replace(':', '')}-s0"
        _write_eval_dir(cfg, rng.random(1319) < 0.5)

    paper = tmp_path / "paper.csv"
    paper.write_text("table,method,granularity,model,dataset,accuracy\n"
                     "main,Identity-PO,sequence,Llama-3-8B,GSM8K,70.0\n")
    monkeypatch.delenv("ADPO_CONF_DIR")  # tables from the runs' manifests alone: this tree has no ipo.yaml
    out = aggregate.run(compose("aggregate", [*common, f"aggregate.paper_tables={paper}",
                                              "aggregate.bootstrap_resamples=200", "aggregate.print_tables=false"]))
    assert {"main", "granularity", "comparisons", "plot"} <= set(out) and out["group_by"] == []
    results = root / "results"
    main = pd.read_csv(results / "main.csv")
    assert list(dict.fromkeys(main["Method"])) == ["Base", "DPO", "IPO", "ADPO"]
    assert main.set_index(["Method", "Row"]).loc[("IPO", "paper"), "Llama-3-8B / GSM8K"] == 70.0
    assert "| IPO | paper | 70.00 |" in (results / "main.md").read_text()
    ablation = pd.read_csv(results / "granularity.csv")
    assert list(zip(ablation["Method"], ablation["Granularity"])) == [("IPO", "static:4")]
    comp = pd.read_csv(results / "comparisons.csv")
    assert {("IPO", "DPO"), ("IPO", "IPO (static:4)"), ("ADPO", "IPO")} <= set(zip(comp["A"], comp["B"]))
    assert "IPO" in (results / "tables.md").read_text()


def test_an_unknown_segment_loss_fails_when_training_starts():
    with pytest.raises(ValueError, match="method.segment_loss.*'hinge'"):
        MethodSpec.from_cfg(compose("train", ["method=adpo", "method.segment_loss=hinge"]).method)
    assert MethodSpec.from_cfg(compose("train", ["method=dpo"]).method).segment_loss == "sigmoid"


def test_cdpo_and_its_official_reading_are_told_apart_in_every_table(tmp_path):
    """cdpo and cdpo_official side by side: their own rows and labels, paper numbers beside the formula's row only
    (the paper's table says cDPO), and a paired comparison between them."""
    root = tmp_path / "out"
    common = [f"paths.root={root}", "model.paper_name=Llama-3-8B", "data=gsm8k", "progress=false", "wandb=disabled"]
    rng = np.random.default_rng(1)
    for method in ("cdpo", "cdpo_official", "cadpo"):
        for seed in (0, 1):  # the whole GSM8K test set: the paper's number is beside the same set only
            _write_eval_dir(compose("eval", [*common, f"method={method}", f"seed={seed}"]), rng.random(1319) < 0.5)
    paper = tmp_path / "paper.csv"
    paper.write_text("table,method,granularity,model,dataset,accuracy\nmain,cDPO,sequence,Llama-3-8B,GSM8K,70.0\n")
    aggregate.run(compose("aggregate", [*common, f"aggregate.paper_tables={paper}", "aggregate.bootstrap_resamples=200",
                                        "aggregate.print_tables=false"]))
    main = pd.read_csv(root / "results" / "main.csv")
    assert list(zip(main["Method"], main["Row"])) == [
        ("cDPO", "ours"), ("cDPO", "paper"), ("cDPO", "ours − paper"), ("cDPO (official code)", "ours (not in the paper)"),
        ("cADPO", "ours (not in the paper)")]
    assert main.set_index(["Method", "Row"]).loc[("cDPO", "paper"), "Llama-3-8B / GSM8K"] == 70.0
    comp = pd.read_csv(root / "results" / "comparisons.csv")
    assert ("cDPO (official code)", "cDPO") in set(zip(comp["A"], comp["B"]))
