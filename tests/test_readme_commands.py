"""Every command line the README shows works as shown, as far as composing its config: a README command that does not
compose fails here, named by its README line.

Which lines: every command in a fenced ```bash block, every line of an indented block that starts like a command
(`adpo-`, `python`, `.venv/bin/`, `sbatch`, `slurm/`, `bash`, `deepspeed`), and every inline `adpo-<app> KEY=VALUE`
span of the prose. How each is checked, without running anything heavy (tests/test_pipeline.py and
tests/test_rehearsal.py run the chains):

- a stage or pipeline command (`adpo-<app> ...`, `.venv/bin/adpo-<app>`, `python -m <stage module>`,
  `python -m torch.distributed.run ... -m adpo.train ...`, `deepspeed ... --module adpo.train ...`): the same entry
  point with `--cfg job --resolve` (every interpolation resolved);
- a sweep (`adpo-<stage> -m ...` with a SLURM launcher, `adpo-sweep STAGE ...`): `adpo-sweep STAGE ... --dry-run`,
  which expands the jobs and composes each one's config, submitting nothing; narrowed to one model, dataset and seed
  (NARROW, for keys the command does not set) to keep it to a few jobs;
- `sbatch slurm/train.sbatch ARGS`, `sbatch slurm/generate.sbatch STAGE ARGS`: the stage the template runs, with ARGS;
  `slurm/submit_chain.sh ARGS`: every stage of the chain it would submit (adpo.registry chain), with ARGS;
- anything else (set-up, pytest, benchmarks, the local cluster, shell) is not a Hydra app: the repository files it
  names must exist, and its program must be one the test knows (NOT_HYDRA), so that a new kind of command is not
  silently skipped.

Placeholders are replaced as SUBSTITUTIONS says (a command with an unreplaced `<...>` fails). All checks run in one
Python process (each entry point's `main()` in turn, its imports paid once), in a temporary working directory.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from adpo.registry import STAGES, TOOLS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Placeholders of the README's usage lines -> what the test runs instead.
SUBSTITUTIONS = {
    "experiment=<name>": "experiment=quickstart",  # any experiment: the quickstart's
    "[any Hydra overrides]": "paths.root=/scratch/x seed=1 wandb=disabled",  # the example its comment gives
    "data=<choice>": "data=gsm8k",  # any data config
    "<test.jsonl>": "outputs/quickstart/toy/tiny/data/test.jsonl",  # the cross-check's problems
}
# Command-line tools with their own argparse parser: the README's arguments are parsed by it, nothing is run.
TOOL_MODULES = ("adpo_eval.lm_eval_crosscheck", "adpo.export")
# A sweep is dry-run for one model, dataset and seed (the README: command-line values narrow a sweep).
NARROW = {"model": "llama3_8b", "data": "gsm8k", "seed": "0"}
# Programs that are not Hydra apps: their commands are only checked for the repository files they name.
NOT_HYDRA = ("bash scripts/setup.sh", "python -m pytest", "python benchmarks/", "slurm/local_cluster.sh", "export",
             "eval", "for", "hf", "done")
COMMAND_START = re.compile(r"^(adpo-|python|\.venv/bin/|sbatch |slurm/|bash |deepspeed )")

APP_MODULES = {**{s.script: s.module for s in STAGES}, **{f"adpo-{n}": m for n, m in TOOLS.items()}}
STAGE_MODULES = {s.module: s.name for s in STAGES} | {"adpo.pipeline": "pipeline"}
CFG_FLAGS = ("--cfg", "-c", "job", "--resolve", "--help", "-h", "--hydra-help")  # replaced by --cfg job --resolve


@dataclass
class Command:
    line: int
    text: str  # as the README shows it, placeholders substituted
    checks: list[tuple[str, list[str]]] = field(default_factory=list)  # (module whose main() runs, argv)
    files: list[str] = field(default_factory=list)  # repository files a non-Hydra command names
    problem: str = ""  # why it cannot be checked

    @property
    def id(self) -> str:
        return f"README:{self.line}"


def _commands_in_block(lines: list[tuple[int, str]], fenced: bool) -> list[tuple[int, str]]:
    out = []
    for number, line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if fenced or COMMAND_START.match(text):
            out.append((number, text))
    return out


def readme_command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every command of the README: fenced blocks, indented lines, inline spans."""
    found: list[tuple[int, str]] = []
    fence: list[tuple[int, str]] | None = None
    shell = False  # a ```bash (sh, shell or plain) block holds commands; ```text or ```yaml do not
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            if fence is None:
                fence, shell = [], line.strip()[3:].strip() in ("", "bash", "sh", "shell")
            else:
                found += _commands_in_block(fence, fenced=True) if shell else []
                fence = None
        elif fence is not None:
            fence.append((number, line))
        elif line.startswith("    "):
            found += _commands_in_block([(number, line)], fenced=False)
        else:
            found += [(number, span) for span in re.findall(r"`(adpo-[a-z]+ [^`]*=[^`]*)`", line)]
    return found


def brace_expanded(text: str) -> list[str]:
    """Words that bash would split by brace expansion ({a,b} or {1..3} outside quotes), e.g. an unquoted
    pipeline.sweep={seed:[0,1]} becomes `pipeline.sweep=seed:[0` and `pipeline.sweep=1]`."""
    words = text.split(" #", 1)[0].split()
    return [w for w in words if w[:1] not in "'\"" and re.search(r"\{[^}'\"]*(,|\.\.)[^}'\"]*\}", w)]


def _substitute(text: str) -> str:
    for placeholder, value in SUBSTITUTIONS.items():
        text = text.replace(placeholder, value)
    return " ".join(text.split())


def _with_cfg_job(args: list[str]) -> list[str]:
    return [a for a in args if a not in CFG_FLAGS] + ["--cfg", "job", "--resolve"]


def _narrowed(args: list[str]) -> list[str]:
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    return args + [f"{k}={v}" for k, v in NARROW.items() if k not in keys]


def _sweep_check(stage: str, args: list[str]) -> tuple[str, list[str]]:
    args = [a for a in args if a not in ("-m", "--multirun", "--dry-run")]
    return "adpo.sweep", [stage, *_narrowed(args), "--dry-run"]


def _stage_module_check(module: str, args: list[str], cmd: Command) -> None:
    if module not in STAGE_MODULES:
        cmd.problem = f"`{module}` is not a stage's module (adpo.registry)"
    elif "-m" in args or "--multirun" in args:
        launcher = [a for a in args if a.startswith("hydra/launcher=")]
        if not launcher or launcher[-1].split("=", 1)[1] not in ("slurm", "slurm_train"):
            cmd.problem = "a -m sweep without a SLURM launcher: this test has no dry run for it"
        else:
            cmd.checks.append(_sweep_check(STAGE_MODULES[module], args))
    else:
        cmd.checks.append((module, _with_cfg_job(args)))


def classify(line: int, text: str) -> list[Command]:
    """The checks of one README command line (a line with `&&` holds several commands)."""
    text = _substitute(text)
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as e:
        return [Command(line, text, problem=f"cannot be split into words: {e}")]
    commands, current = [], []
    for token in tokens + ["&&"]:
        if token in ("&&", "||", ";"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    out = []
    for argv in commands:
        cmd = Command(line, shlex.join(argv))
        out.append(cmd)
        program = argv[0].removeprefix(".venv/bin/")
        words = " ".join([program, *argv[1:]])
        if "<" in words and ">" in words:
            cmd.problem = "a placeholder without a substitution (add one to SUBSTITUTIONS)"
        elif expanded := brace_expanded(text):
            cmd.problem = f"bash's brace expansion splits {expanded}: quote it ('...')"
        elif program == "adpo-sweep" or words.startswith("python -m adpo.sweep "):
            rest = argv[1:] if program == "adpo-sweep" else argv[3:]
            cmd.checks.append(_sweep_check(rest[0], rest[1:]))
        elif program in APP_MODULES:
            _stage_module_check(APP_MODULES[program], argv[1:], cmd)
        elif program == "python" and argv[1:3] == ["-m", "torch.distributed.run"]:
            at = argv.index("-m", 3)
            _stage_module_check(argv[at + 1], argv[at + 2:], cmd)
        elif program == "python" and len(argv) > 2 and argv[1] == "-m" and argv[2] in TOOL_MODULES:
            cmd.checks.append((f"argparse:{argv[2]}", argv[3:]))
        elif program == "python" and len(argv) > 2 and argv[1] == "-m" and argv[2] in STAGE_MODULES:
            _stage_module_check(argv[2], argv[3:], cmd)
        elif program == "deepspeed" and "--module" in argv:
            at = argv.index("--module")
            _stage_module_check(argv[at + 1], argv[at + 2:], cmd)
        elif program == "sbatch":
            script = next((a for a in argv[1:] if a.startswith("slurm/")), "")
            args = argv[argv.index(script) + 1:] if script else []
            if script == "slurm/train.sbatch":
                cmd.checks.append(("adpo.train", _with_cfg_job(args)))
            elif script == "slurm/generate.sbatch" and args:
                _stage_module_check(APP_MODULES[f"adpo-{args[0]}"], args[1:], cmd)
            else:
                cmd.problem = f"an sbatch command of an unknown template {script!r}"
        elif program == "slurm/submit_chain.sh":
            args = [a for a in argv[1:] if a != "--dry-run"]
            cmd.checks.append(("adpo.registry:chain", args))
        elif words.startswith(NOT_HYDRA):
            cmd.files = [w for w in argv if re.match(r"^(scripts|benchmarks|slurm)/\S+\.(sh|py)$", w)]
        else:
            cmd.problem = "a command this test does not know: add a check for it, or its program to NOT_HYDRA"
    return out


@cache
def readme_commands() -> tuple[Command, ...]:
    return tuple(c for number, text in readme_command_lines(README.read_text()) for c in classify(number, text))


HYDRA_COMMANDS = [c for c in readme_commands() if c.checks or c.problem]
OTHER_COMMANDS = [c for c in readme_commands() if not (c.checks or c.problem)]

# Runs every check in one process: each entry point's main() with sys.argv set, its output captured; the chain of
# slurm/submit_chain.sh expands into a --cfg job check of each of its stages.
DRIVER = r'''
import contextlib, importlib, io, json, sys, traceback
checks_file, results_file = sys.argv[1:3]  # the entry points rewrite sys.argv
checks = json.load(open(checks_file))
results = []
for module, argv in checks:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if module == "adpo.registry:chain":
                from adpo.registry import _chain, stage
                for name in _chain(argv):
                    sys.argv = [f"adpo-{name}", *argv, "--cfg", "job", "--resolve"]
                    importlib.import_module(stage(name).module).main()
            elif module == "adpo.sweep":
                importlib.import_module(module).main(argv)
            elif module.startswith("argparse:"):  # parsed by the tool's own parser, then stopped
                import argparse
                class Parsed(Exception):
                    pass
                original = argparse.ArgumentParser.parse_args
                def parse_only(self, args=None, namespace=None):
                    original(self, args, namespace)
                    raise Parsed
                argparse.ArgumentParser.parse_args = parse_only
                try:
                    importlib.import_module(module.split(":", 1)[1]).main(argv)
                except Parsed:
                    pass
                finally:
                    argparse.ArgumentParser.parse_args = original
            else:
                sys.argv = ["adpo", *argv]
                importlib.import_module(module).main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        code = 1
        err.write(traceback.format_exc())
    results.append({"code": code, "stdout": out.getvalue()[-2000:], "stderr": err.getvalue()[-4000:]})
json.dump(results, open(results_file, "w"))
'''


def run_checks(commands: list[Command], work: Path) -> dict[str, list[dict]]:
    """Every check's exit code and output, by command (id + text), run by DRIVER in `work`."""
    checks = [(c.id + c.text, check) for c in commands for check in c.checks]
    (work / "checks.json").write_text(json.dumps([check for _, check in checks]))
    (work / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, "driver.py", "checks.json", "results.json"], cwd=work,
                          capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_command: dict[str, list[dict]] = {}
    for (key, check), result in zip(checks, json.loads((work / "results.json").read_text()), strict=True):
        by_command.setdefault(key, []).append({"check": check, **result})
    return by_command


def failures(command: Command, results: dict[str, list[dict]]) -> list[str]:
    if command.problem:
        return [f"README.md line {command.line}: `{command.text}`: {command.problem}"]
    return [f"README.md line {command.line}: `{command.text}` does not compose (checked as {result['check'][0]} "
            f"{shlex.join(result['check'][1])}):\n{result['stderr']}\n{result['stdout'][-500:]}"
            for result in results[command.id + command.text] if result["code"] != 0]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, list[dict]]:
    return run_checks(HYDRA_COMMANDS, tmp_path_factory.mktemp("readme_commands"))


def test_the_readme_shows_the_commands_this_test_knows_it_has():
    ids = {c.text for c in HYDRA_COMMANDS}
    for expected in ("adpo-pipeline experiment=quickstart", "adpo-sweep train +sweep=paper_main --dry-run",
                     "slurm/submit_chain.sh experiment=paper model=llama3_8b data=gsm8k method=cadpo seed=1"):
        assert expected in ids, f"README command not extracted: {expected}"
    assert len(HYDRA_COMMANDS) >= 20, [c.text for c in HYDRA_COMMANDS]


@pytest.mark.parametrize("command", HYDRA_COMMANDS, ids=lambda c: f"{c.id} {c.text[:60]}")
def test_readme_hydra_command_composes(command: Command, results):
    problems = failures(command, results)
    assert not problems, "\n".join(problems)


def test_a_command_that_does_not_compose_fails_naming_its_readme_line(tmp_path):
    """The test's own check, on a README of five commands: the group and sweep forms of issue 14 compose (they did
    not: `sweep=` needed `+`, and pipeline.sweep={...} met a struct {}); a misspelt option and key do not, and
    neither does a mapping bash would split (unquoted braces with a comma)."""
    readme = textwrap.dedent("""\
        # Title

        ```bash
        adpo-train sweep=paper_main model=llama3_8b       # the + is optional
        adpo-pipeline experiment=quickstart 'pipeline.sweep={seed:[0,1]}'
        adpo-train method=nope
        adpo-pipeline experiment=quickstart pipeline.sweep={seed:[0,1]}
        ```

        Prose with `adpo-pipeline experiment=quickstart pipeline.nope=1` inline.
        """)
    commands = [c for number, text in readme_command_lines(readme) for c in classify(number, text)]
    assert [c.line for c in commands] == [4, 5, 6, 7, 10]
    results = run_checks(commands, tmp_path)
    assert [bool(failures(c, results)) for c in commands] == [False, False, True, True, True]
    assert failures(commands[2], results)[0].startswith("README.md line 6: `adpo-train method=nope` does not compose")
    assert "Could not find 'method/nope'" in failures(commands[2], results)[0]
    assert "brace expansion splits ['pipeline.sweep={seed:[0,1]}']" in failures(commands[3], results)[0]
    assert "README.md line 10" in failures(commands[4], results)[0]


@pytest.mark.parametrize("command", OTHER_COMMANDS, ids=lambda c: f"{c.id} {c.text[:60]}")
def test_readme_other_command_names_files_that_exist(command: Command):
    missing = [f for f in command.files if not (REPO / f).is_file()]
    assert not missing, f"README.md line {command.line}: `{command.text}` names missing files {missing}"
