"""The design card's layout: one registry of stages behind the pipeline, adpo-sweep, the sbatch templates and the
console scripts; packages importable after install; imports in one direction (data_prep and eval use the core,
never each other, and the core uses neither)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from adpo import registry

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"adpo": REPO / "src" / "adpo", "adpo_data_prep": REPO / "data_prep" / "adpo_data_prep",
            "adpo_eval": REPO / "eval" / "adpo_eval"}
# What each package may import of the project's own packages.
ALLOWED = {"adpo": {"adpo"}, "adpo_data_prep": {"adpo", "adpo_data_prep"}, "adpo_eval": {"adpo", "adpo_eval"}}


def test_top_level_is_the_design_cards():
    card = {"pyproject.toml", "README.md", "conf", "src", "data_prep", "eval", "results", "slurm", "tests"}
    allowed_extra = {".ci", "benchmarks", "scripts", "ARCHITECTURE.md", "setup.py", ".gitignore"}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    top = {line.split("/", 1)[0] for line in tracked.splitlines() if line}
    if not top:
        pytest.skip("not a git checkout")
    assert card <= top, f"missing from the top level: {card - top}"
    assert top <= card | allowed_extra, f"not on the design card: {top - card - allowed_extra}"


def test_no_package_shadows_a_builtin_or_stdlib_module():
    for name in PACKAGES:
        assert name not in sys.stdlib_module_names and name not in dir(__builtins__)
    # The eval/ folder holds a package; it is not one itself.
    assert not (REPO / "eval" / "__init__.py").exists() and not (REPO / "data_prep" / "__init__.py").exists()


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_go_one_way(package):
    bad = {}
    for path in sorted(PACKAGES[package].rglob("*.py")):
        wrong = _project_imports(path) - ALLOWED[package]
        if wrong:
            bad[str(path.relative_to(REPO))] = sorted(wrong)
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_every_registered_stage_is_importable_with_run_and_main():
    for stage in registry.STAGES:
        module = importlib.import_module(stage.module)
        assert callable(module.run) and callable(module.main), stage.name
        assert (REPO / "conf" / f"{stage.config}.yaml").is_file(), stage.name


def test_console_scripts_are_the_registrys():
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
                 if ep.name.startswith("adpo-")}
    assert installed == registry.console_scripts()
    for name in installed:  # on PATH beside this interpreter, as the README's commands call them
        assert (Path(sys.executable).parent / name).exists(), name


def test_pipeline_and_sweep_know_exactly_the_registered_stages():
    from adpo import sweep
    from adpo.config import compose

    assert list(compose("pipeline").pipeline.stages) == registry.stage_names()
    assert set(sweep.STAGES) == set(registry.stage_names()) | {"pipeline"}


def test_registry_command_line_names_modules_and_chains():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "adpo.registry", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    assert run("module", "eval").stdout.strip() == "adpo_eval.evaluate"
    unknown = run("module", "banana")
    assert unknown.returncode == 2 and "banana" in unknown.stderr
    # The chain asks the composed config, not the spelling of the override, whether weights are needed.
    assert run("chain", "method=dpo").stdout.split() == ["prepare", "sample", "pairs", "train", "eval"]
    assert "weights" in run("chain", "method=cadpo").stdout.split()
    assert "weights" in run("chain", "method=adpo", "method.use_weights=true").stdout.split()
