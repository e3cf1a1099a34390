"""What `adpo-<stage> --help` and `adpo-sweep --help` print, and the command-line shorthand every entry point accepts.

Each entry point's help is a Hydra help config, `conf/hydra/help/<stage>.yaml` (selected in the stage's primary
config with `override hydra/help: <stage>`): its `header` (usage, what the stage reads and writes) and `footer`
(examples) are written there; its `template` asks the `${adpo_help:<app>}` resolver below for the rest, built from
the config tree itself so that it cannot go stale: the stage's input/output directories as the command line
resolves them, the pipeline's stages (adpo.registry), the experiments and every config group's options, each with
the first sentence of the first comment of its file.

`group_shorthand` lets `sweep=paper_main` mean `+sweep=paper_main`: groups that no config selects by default (sweep,
rehearsal) need Hydra's `+` to be added, and a default of `null` would make `+sweep=` fail instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

RESOLVER = "adpo_help"
# Groups no config selects by default: `group=option` on the command line is taken as `+group=option`.
APPEND_GROUPS = ("sweep", "rehearsal")
# Config groups in the order the help lists them, with how each is used; hydra/launcher is read from conf/ too.
GROUPS: tuple[tuple[str, str], ...] = (
    ("model", ""), ("data", ""), ("method", ""), ("train", ""), ("deepspeed", ""), ("generation", ""),
    ("sampling", ""), ("eval", ""), ("wandb", ""), ("hydra/launcher", "with -m"),
    ("sweep", "with -m, or adpo-sweep STAGE sweep=NAME"), ("rehearsal", "the paper's commands on a CPU machine"),
)
DESCRIPTION_WIDTH = 92


def _conf_dir() -> Path:
    from adpo.config import conf_dir

    return conf_dir()


def group_shorthand(args: Sequence[str]) -> list[str]:
    """`sweep=paper_main` -> `+sweep=paper_main` (and rehearsal=); everything else unchanged."""
    return [f"+{a}" if a.split("=", 1)[0] in APPEND_GROUPS and "=" in a else a for a in args]


# ------------------------------------------------------------------------------------------ descriptions

def _first_comment(text: str) -> str:
    """The first comment paragraph of a config file, without `# @package` lines and indented example lines."""
    words: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            if words or stripped:
                break
            continue
        body = stripped[1:]
        if body.strip().startswith("@package"):
            continue
        if body.startswith("   ") or not body.strip():  # an indented command line or an empty comment line
            if words:
                break
            continue
        words.append(body.strip())
    return " ".join(words)


def _shorten(paragraph: str, width: int = DESCRIPTION_WIDTH) -> str:
    """As many whole sentences as fit in `width`; a first sentence too long for it ends at its first colon or
    semicolon when that leaves most of it, else at a word, with "..."."""
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", paragraph.strip())
    text = sentences[0]
    if len(text) > width:
        for sep in (": ", "; "):
            head = text.split(sep, 1)[0]
            if width // 2 <= len(head) <= width:
                return head
        return text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:(") + "..."
    for sentence in sentences[1:]:
        if len(text) + 1 + len(sentence) > width:
            break
        text += " " + sentence
    return text


def describe(path: Path) -> str:
    """One line about a config file: its first comment's first sentence, else its first top-level scalar keys."""
    text = path.read_text()
    paragraph = _first_comment(text)
    if paragraph:
        return _shorten(paragraph)
    cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create()
    scalars = [f"{k}: {OmegaConf.to_yaml({k: v}).split(': ', 1)[1].strip()}"
               for k, v in OmegaConf.to_container(cfg).items() if not isinstance(v, (dict, list))]
    return ", ".join(scalars[:3])


def options(group: str) -> list[tuple[str, str]]:
    """(option, description) for every config of a group in conf/, leaving out `_`-prefixed shared parts."""
    folder = _conf_dir() / group
    return [(p.stem, describe(p)) for p in sorted(folder.glob("*.yaml")) if not p.stem.startswith("_")]


# ------------------------------------------------------------------------------------------ sections

def _choices() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except ValueError:  # not under hydra.main
        return {}


def _option_lines(group: str, chosen: Any, indent: str = "  ") -> list[str]:
    opts = options(group)
    width = max((len(name) for name, _ in opts), default=0)
    return [f"{indent}{'*' if name == chosen else ' '} {name.ljust(width)}  {desc}" for name, desc in opts]


def experiments_text(choices: dict[str, Any] | None = None) -> str:
    choices = _choices() if choices is None else choices
    lines = ["Experiments (experiment=NAME" + ("; * = this command's choice):" if choices else "):")]
    lines += _option_lines("experiment", choices.get("experiment"))
    return "\n".join(lines)


def groups_text(choices: dict[str, Any] | None = None, exclude: Sequence[str] = (),
                title: str = "Config groups") -> str:
    choices = _choices() if choices is None else choices
    marks = "; * = this command's choice" if choices else ""
    lines = [f"{title} (GROUP=OPTION{marks}; any key: KEY=VALUE, a new key: +KEY=VALUE):"]
    for group, note in GROUPS:
        if group in exclude or not (_conf_dir() / group).is_dir():
            continue
        lines.append(f"  {group}=" + (f"    ({note})" if note else ""))
        lines += _option_lines(group, choices.get(group), indent="    ")
    return "\n".join(lines)


def _raw_and_resolved(root: Any, key: str) -> tuple[str, str]:
    node = root._get_node(key)
    raw = str(node._value()) if node is not None else "?"
    try:
        resolved = str(OmegaConf.select(root, key, throw_on_resolution_failure=True))
    except Exception as e:  # noqa: BLE001 - a help page shows what it can
        resolved = f"(unresolved: {type(e).__name__})"
    return raw, resolved


def io_text(root: Any) -> str:
    """The stage's *_dir keys: the config's value and what this command line resolves it to."""
    keys = [k for k in root if isinstance(k, str) and k.endswith("_dir") and k != "output_dir"] + ["output_dir"]
    lines = ["Directories (override any: KEY=PATH; `paths.root=DIR` moves them all):"]
    width = max(len(k) for k in keys)
    for key in keys:
        raw, resolved = _raw_and_resolved(root, key)
        shown = raw if raw == resolved else f"{raw}  ->  {resolved}"
        lines.append(f"  {key.ljust(width)}  {shown}")
    return "\n".join(lines)


# The pipeline's order: the base model's evaluation comes before sampling, every run's train + eval after the data.
_PIPELINE_ORDER = (
    ("prepare", ""),
    ("sft", "pipeline.sft=auto: only for the toy task, data.source=toy"),
    ("eval", "of the base model, as run `base`: pipeline.base_eval"),
    ("sample", ""),
    ("pairs", ""),
    ("weights", "pipeline.weights=auto: only when a run's method uses weights, cdpo or cadpo"),
    ("train", "then eval: once per run of pipeline.runs x pipeline.sweep"),
    ("aggregate", ""),
    ("analyze", "over every run below train/: analysis/"),
    ("trajectory", "pipeline.trajectory=auto: when a run exports snapshots, train.snapshot_every/_at"),
)


def pipeline_text(root: Any) -> str:
    from adpo.registry import stage

    try:
        wanted = [str(s) for s in root.pipeline.stages]
    except Exception:  # noqa: BLE001
        wanted = []
    lines = ["Stages, in order (each a subprocess; one whose manifest matches its config and inputs is skipped;",
             "pipeline.stages=[...] runs fewer, pipeline.dry_run=true prints the plan):"]
    for i, (name, note) in enumerate(_PIPELINE_ORDER, 1):
        mark = " " if not wanted or name in wanted else "-"
        lines.append(f"  {i}.{mark}{name.ljust(10)}  {stage(name).summary}")
        if note:
            lines.append(f"     {'':10}  ({note})")
    try:
        root_dir = str(OmegaConf.select(root, "paths.root", throw_on_resolution_failure=True))
    except Exception:  # noqa: BLE001
        root_dir = "${paths.root}"
    lines += [f"Writes everything below paths.root ({root_dir}): data/, samples/, pairs/, train/<run>/, eval/<run>/,",
              "results/, analysis/, trajectory/, and each stage's output in logs/NN-<stage>[-<run>].log."]
    return "\n".join(lines)


def body(app: str, root: Any = None) -> str:
    """What the help template shows between its header and footer, for `adpo-<stage>`."""
    stage = app.removeprefix("adpo-")
    parts = [pipeline_text(root) if stage == "pipeline" else io_text(root)] if root is not None else []
    parts += [experiments_text(), groups_text()]
    return "\n\n".join(parts)


def _resolve(app: str, *, _root_: Any) -> str:
    # The template goes through string.Template after OmegaConf: a literal `$` must be doubled.
    return body(str(app), _root_).replace("$", "$$")


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, _resolve)


# ------------------------------------------------------------------------------------------ adpo-sweep

SWEEP_EXAMPLES = """\
Examples:
  adpo-sweep train +sweep=paper_main --dry-run     # lists the 96 jobs, the sbatch script, each job's config
  adpo-sweep sample +sweep=paper_data              # vLLM sampling, one SLURM job per (model, dataset)
  adpo-sweep train sweep=granularity model=llama3_8b seed=0          # narrow a sweep from the command line
  adpo-sweep eval +sweep=paper_main hydra.launcher.partition=gpu hydra.launcher.timeout_min=240
  adpo-sweep train +sweep=granularity hydra.launcher.nodes=2 --dry-run   # 2 nodes of 8 GPUs per training job"""


def sweep_help(usage: str, stages: Sequence[str], default_launchers: dict[str, str]) -> str:
    from adpo.registry import TOOLS, stage

    width = max(len(s) for s in stages)
    lines = [usage.replace("   (", "\n       ("), "",
             "Runs `adpo-STAGE -m OVERRIDES` as one SLURM job array (Hydra's multirun with a submitit launcher), waits",
             "for every job and fails with the first job's error. The launcher defaults to hydra/launcher=slurm (one",
             "task per node), slurm_train for train (one task per GPU); --dry-run composes every job's config, writes",
             "them to the sweep directory's dry_run/ and prints the sbatch script, submitting nothing.", "",
             "Stages (each reads and writes what `adpo-STAGE --help` says):"]
    for name in stages:
        summary = stage(name).summary if name not in TOOLS else "the whole chain (see adpo-pipeline --help)"
        launcher = default_launchers.get(name, "slurm")
        lines.append(f"  {name.ljust(width)}  {summary}  [{launcher}]")
    lines += ["", "Sweeps (+sweep=NAME or sweep=NAME):"] + _option_lines("sweep", None)
    lines += ["", "Launchers (hydra/launcher=NAME; resources: hydra.launcher.<field>=VALUE):"]
    lines += _option_lines("hydra/launcher", None)
    lines += ["", experiments_text({}), "", groups_text({}, exclude=("sweep", "hydra/launcher"), title="Other config groups"),
              "", SWEEP_EXAMPLES]
    return "\n".join(lines)
