"""`--help` of every entry point (issue 14, "help that helps"): a usage line, what the stage reads and writes (the
pipeline: its stages in order), the experiments and every config group's options with a line each, hydra/launcher
included, and examples that compose; exit 0, and no config dump. The text comes from conf/hydra/help/<stage>.yaml and
adpo.help, which reads each option's line from the first comment of its file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_readme_commands import classify, failures, run_checks

from adpo.help import GROUPS, _shorten, describe, group_shorthand, options
from adpo.registry import STAGES, TOOLS

REPO = Path(__file__).resolve().parents[1]
APPS = [s.name for s in STAGES] + ["pipeline"]
MODULES = {s.name: s.module for s in STAGES} | {name: module for name, module in TOOLS.items()}

# Each entry point's main() with `--help` in one process (imports paid once), output and exit code captured.
DRIVER = r'''
import contextlib, importlib, io, json, sys
out_file, runs = sys.argv[1], json.loads(sys.argv[2])
results = {}
for key, module, argv in runs:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = list(argv)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main = importlib.import_module(module).main
            main(argv[1:]) if module == "adpo.sweep" else main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results[key] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
json.dump(results, open(out_file, "w"))
'''


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("help")
    runs = [(app, MODULES[app], [f"adpo-{app}", "--help"]) for app in APPS]
    runs += [("pipeline paper", "adpo.pipeline", ["adpo-pipeline", "experiment=paper", "model=qwen3_8b", "--help"]),
             ("sweep --help", "adpo.sweep", ["adpo-sweep", "--help"]), ("sweep -h", "adpo.sweep", ["adpo-sweep", "-h"]),
             ("sweep", "adpo.sweep", ["adpo-sweep"]), ("sweep bad", "adpo.sweep", ["adpo-sweep", "nope"]),
             ("hydra-help", "adpo.pipeline", ["adpo-pipeline", "--hydra-help"])]
    (work / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, "driver.py", "out.json", json.dumps(runs)], cwd=work, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


def examples(text: str) -> list[str]:
    lines = text.split("Examples:\n", 1)[1].splitlines()
    taken = []
    for line in lines:
        if not line.startswith("  ") or not line.strip():
            break
        taken.append(line.strip())
    return taken


def assert_lists_experiments_and_groups(text: str, groups=GROUPS) -> None:
    assert "Experiments (experiment=NAME" in text
    for name, description in options("experiment"):
        assert f" {name} " in text and description in text, (name, description)
    for group, _ in groups:
        assert f"  {group}=" in text or group in ("sweep", "hydra/launcher"), group
        for name, description in options(group):
            assert description, f"conf/{group}/{name}.yaml has no description"
            assert f" {name} " in text and description in text, (group, name, description)


@pytest.mark.parametrize("app", APPS)
def test_help_has_usage_io_experiments_groups_and_examples(helps, app):
    result = helps[app]
    text = result["stdout"]
    assert result["code"] == 0, result["stderr"]
    assert text.startswith(f"adpo-{app}: "), text[:200]
    assert f"usage: adpo-{app} [" in text
    if app == "pipeline":
        section = text.split("Stages, in order", 1)[1].split("\n\n", 1)[0]
        numbered = [line.split(".", 1)[1] for line in section.splitlines() if line[:4].strip().rstrip(".").isdigit()]
        shown = [line.lstrip(" -").split()[0] for line in numbered]
        assert shown == ["prepare", "sft", "eval", "sample", "pairs", "weights", "train", "aggregate", "analyze",
                         "trajectory"], section
        assert not any(line.startswith("-") for line in numbered), section  # all in the default pipeline.stages
        assert "Writes everything below paths.root (outputs/default/gsm8k/tiny)" in text
    else:
        assert "Reads " in text and "Writes " in text
        io = text.split("Directories (", 1)[1].split("\n\n", 1)[0]
        assert "  input_dir " in io and "  output_dir " in io, io
        assert "outputs/default/gsm8k/tiny" in io, io  # resolved for this command line
    assert_lists_experiments_and_groups(text)
    for launcher in ("serial", "local", "slurm", "slurm_train"):
        assert f" {launcher} " in text.split("  hydra/launcher=", 1)[1]
    assert "* serial " in text and "* tiny " in text and "* adpo " in text  # this command's choices
    assert 3 <= len(examples(text)) <= 5, examples(text)
    assert all(e.startswith((f"adpo-{app} ", "python -m ")) for e in examples(text)), examples(text)
    # No config dump: none of the config's top-level keys at the start of a line, and a page, not a listing.
    assert not any(line.startswith(("paths:", "run_name:", "defaults:", "hydra:", "pipeline:")) for line in
                   text.splitlines()), text
    assert len(text.splitlines()) < 120


def test_help_follows_the_command_line(helps):
    text = helps["pipeline paper"]["stdout"]
    assert "* paper " in text and "* qwen3_8b " in text and "* vllm " in text
    assert "Writes everything below paths.root (outputs/paper/gsm8k/qwen3_8b)" in text


def test_hydra_help_is_still_hydras(helps):
    assert helps["hydra-help"]["code"] == 0
    assert "== Flags ==" in helps["hydra-help"]["stdout"] and "hydra/help: " in helps["hydra-help"]["stdout"]


def test_adpo_sweep_help(helps):
    for key in ("sweep --help", "sweep -h"):
        result = helps[key]
        text = result["stdout"]
        assert result["code"] == 0, result["stderr"]
        assert text.startswith("usage: adpo-sweep STAGE [--dry-run]")
        for stage in APPS:
            assert f"\n  {stage} " in text, stage
        assert "[slurm_train]" in text.split("\n  train ", 1)[1].splitlines()[0]
        assert_lists_experiments_and_groups(text)
        assert 3 <= len(examples(text)) <= 5 and all(e.startswith("adpo-sweep ") for e in examples(text))
    for key in ("sweep", "sweep bad"):
        assert helps[key]["code"] == 2 and "usage: adpo-sweep STAGE" in helps[key]["stderr"], helps[key]
    assert "unknown stage 'nope'" in helps["sweep bad"]["stderr"]


def test_every_help_example_composes(helps, tmp_path):
    """The examples are README-like commands: checked the way tests/test_readme_commands.py checks the README's."""
    commands = [c for key in [*APPS, "sweep --help"] for i, text in enumerate(examples(helps[key]["stdout"]))
                for c in classify(i, text)]
    assert len(commands) >= 3 * len(APPS)
    results = run_checks(commands, tmp_path)
    problems = [p.replace("README.md line", "help example") for c in commands for p in failures(c, results)]
    assert not problems, "\n".join(problems)


def test_descriptions_are_the_first_sentence_of_the_first_comment(tmp_path):
    config = tmp_path / "x.yaml"
    config.write_text(textwrap.dedent("""\
        # @package _global_
        # The paper's setup, once. More about it that does not fit on the line at all, however the line is cut
        # here and there.
        #   adpo-pipeline experiment=x       # an example, not the description
        key: 1
        """))
    assert describe(config) == "The paper's setup, once."
    config.write_text("# Short. Two short sentences fit.\nkey: 1\n")
    assert describe(config) == "Short. Two short sentences fit."
    config.write_text("enabled: false\nmode: disabled\nnested: {a: 1}\n")
    assert describe(config) == "enabled: false, mode: disabled"
    long = "A sentence " + "that goes on " * 12 + "and ends."
    assert len(_shorten(long)) <= 92 and _shorten(long).endswith("...")
    cut = _shorten("DeepSpeed config, as data: " + "more words " * 12 + "end.")  # the head is too short to stand
    assert cut.startswith("DeepSpeed config, as data: more words") and cut.endswith(" more...") and len(cut) <= 92
    assert _shorten("The paper's setup for its models, all four of them and two datasets: " + "x " * 40) == \
        "The paper's setup for its models, all four of them and two datasets"


def test_every_group_option_has_a_description():
    for group, _ in [*GROUPS, ("experiment", "")]:
        for name, description in options(group):
            assert description and len(description) <= 92, (group, name, description)


def test_group_shorthand_adds_the_plus_only_to_groups_without_a_default():
    assert group_shorthand(["sweep=paper_main", "+sweep=granularity", "rehearsal=tiny", "model=tiny", "-m",
                            "pipeline.sweep={seed:[0,1]}", "sweep"]) == \
        ["+sweep=paper_main", "+sweep=granularity", "+rehearsal=tiny", "model=tiny", "-m",
         "pipeline.sweep={seed:[0,1]}", "sweep"]
