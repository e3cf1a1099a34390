"""What the tables call each method and where its rows go, as its method config (conf/method/*.yaml) says."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpo.config import compose, conf_dir

# Method config keys that only say how tables show a method: no stage's output depends on them.
DISPLAY_KEYS = ("label", "family", "order", "main_granularity", "paper_name")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    label: str
    family: str  # the method whose granularity line this one sits on (DPO is ADPO with one segment)
    order: float  # rows go by order, then name: a method without one comes after those with one
    main_granularity: str | None  # the granularity of its row in the main table; None: not in it
    paper_name: str  # its name in the paper's CSV

    @property
    def rank(self) -> tuple[float, str]:
        return self.order, self.name


# The base model has no method config; its rows come first.
BASE_MODEL = MethodInfo("base", "Base", "base", -math.inf, "-", "Base")


def method_info(name: str, recorded: Mapping[str, Any] | None = None) -> MethodInfo:
    """As the run recorded it (its manifest's method node), else as conf/method/<name>.yaml says (runs evaluated
    before the method configs had display keys), else the name itself."""
    keys = dict(_configured(str(conf_dir()), name))
    keys.update({k: v for k, v in (recorded or {}).items() if k in DISPLAY_KEYS and v is not None})
    label = str(keys.get("label", name))
    main = keys.get("main_granularity")
    return MethodInfo(name=name, label=label, family=str(keys.get("family", name)),
                      order=float(keys.get("order", math.inf)), main_granularity=str(main) if main else None,
                      paper_name=str(keys.get("paper_name", label)))


@functools.cache
def _configured(conf: str, name: str) -> dict[str, Any]:
    """The display keys of a method config in the conf tree `conf` (read once per tree and name)."""
    if "/" in name or not (Path(conf) / "method" / f"{name}.yaml").is_file():
        return {}
    node = compose(f"method/{name}").method
    return {k: node[k] for k in DISPLAY_KEYS if k in node}


class Methods(dict[str, MethodInfo]):
    """Method name -> how tables show it. A name no run has (a plot line's family) is looked up in the configs."""

    @classmethod
    def of(cls, infos: Iterable[MethodInfo]) -> Methods:
        methods = cls()
        for info in infos:  # runs of one method share its display keys; the first run's win
            methods.setdefault(info.name, info)
        return methods

    def __missing__(self, name: str) -> MethodInfo:
        return method_info(name)

    def variant_label(self, method: str, granularity: str) -> str:
        """The method's label; with the granularity unless it is the one of its main-table row."""
        label = self[method].label
        return label if self.in_main_table(method, granularity) else f"{label} ({granularity})"

    def in_main_table(self, method: str, granularity: str) -> bool:
        return granularity == self[method].main_granularity

    def for_paper_name(self, paper_name: str) -> str:
        """Our method the paper calls paper_name: a run's method first, then a method config; else the paper's name
        itself (a row of the paper's that no config of ours implements, shown under that name)."""
        for info in [*self.values(), *(method_info(n) for n in configured_methods(str(conf_dir())))]:
            if info.paper_name == paper_name:
                self.setdefault(info.name, info)
                return info.name
        self.setdefault(paper_name, MethodInfo(paper_name, paper_name, paper_name, math.inf, None, paper_name))
        return paper_name


@functools.cache
def configured_methods(conf: str) -> tuple[str, ...]:
    """The method configs in the conf tree `conf` (conf/method/*.yaml; _base.yaml is no method)."""
    return tuple(sorted(p.stem for p in (Path(conf) / "method").glob("*.yaml") if not p.stem.startswith("_")))
