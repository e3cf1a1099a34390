"""Pairs that would teach nothing or teach twice, and what truncation cut: found after pairs.jsonl is read and before
any training step (the reference pass, the DeepSpeed engine), the same way on every rank.

A pair left out is counted under the first reason that applies, logged with its first lines, and recorded in the train
manifest's outputs (`pairs_dropped`); a file with no pair left is refused (DataError naming the file and the reasons).

  identical                   chosen and rejected are the same text: the DPO margin is 0 whatever the policy, so the
                              pair adds log 2 to the loss and no gradient (a file of them trains nothing, at loss
                              0.6931 every step).
  duplicate                   the same prompt, chosen, rejected (and weights) as an earlier line, under any id: the
                              first is kept, since a repeat would weigh that pair double. The same id on two
                              *different* pairs is refused with both lines: the pairs and weights stages write unique
                              ids (`<problem_id>-<rank>`, one row per row), so such a file was stitched together.
  no_room_for_response        the prompt leaves at most one token of model.max_length for the responses (a prompt not
                              cut under model.max_prompt_length=null, or one cut to max_length - 1 or more): both
                              responses would be their first token.
  identical_after_truncation  chosen and rejected differ only beyond the point where model.max_length cuts them.

Truncation of the pairs that are trained on is counted too (`pairs_truncated`: pairs whose prompt, chosen or rejected
was cut), and logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from adpo.io import DataError
from adpo.training.pairs_data import PairRecord, TokenizedPair, tokenize_pairs

log = logging.getLogger(__name__)

DROP_REASONS = {
    "identical": "chosen and rejected are the same text",
    "duplicate": "a repeat of an earlier pair",
    "no_room_for_response": "the prompt leaves at most one token of model.max_length for the responses",
    "identical_after_truncation": "chosen and rejected are the same tokens once cut to model.max_length",
}
SHOWN = 5  # lines named per finding in a log line or an error


def _line(where: str) -> str:
    return "line " + where.rsplit(":", 1)[1]


def _first(notes: Sequence[str]) -> str:
    more = f", ... ({len(notes) - SHOWN} more)" if len(notes) > SHOWN else ""
    return ", ".join(notes[:SHOWN]) + more


@dataclass
class PairsReport:
    """What the checks found in one pairs file: the pairs left out (by reason) and what truncation cut."""

    path: Path
    tokenization: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in DROP_REASONS})  # reason -> notes
    kept_where: list[str] = field(default_factory=list)  # "file:line" of each pair kept, in order
    kept_cut: list[tuple[int, int, int]] = field(default_factory=list)  # TokenizedPair.cut of each pair kept

    def dropped_counts(self) -> dict[str, int]:
        return {reason: len(notes) for reason, notes in self.dropped.items()}

    def _used(self, trained: Sequence[bool] | None) -> Sequence[bool]:
        return [True] * len(self.kept_cut) if trained is None else trained

    def truncated_counts(self, trained: Sequence[bool] | None = None) -> dict[str, int]:
        """Pairs (of those trained on: `trained`, one flag per pair kept) whose prompt, chosen, rejected was cut."""
        cuts = [c for c, t in zip(self.kept_cut, self._used(trained)) if t]
        return {"pairs": sum(any(c) for c in cuts), "prompt": sum(c[0] > 0 for c in cuts),
                "chosen": sum(c[1] > 0 for c in cuts), "rejected": sum(c[2] > 0 for c in cuts)}

    def manifest_outputs(self, trained: Sequence[bool] | None = None) -> dict[str, dict[str, int]]:
        return {"pairs_dropped": self.dropped_counts(), "pairs_truncated": self.truncated_counts(trained)}

    def log_findings(self, trained: Sequence[bool] | None = None) -> None:
        """One warning per reason pairs were left out for, one line for truncation (of the pairs `trained` on)."""
        total = len(self.kept_where) + sum(self.dropped_counts().values())
        for reason, notes in self.dropped.items():
            if notes:
                hint = self.hint() if reason == "no_room_for_response" else ""
                log.warning("%s: %d of %d pairs left out (%s): %s%s", self.path, len(notes), total,
                            DROP_REASONS[reason], _first(notes), hint)
        counts = self.truncated_counts(trained)
        if counts["pairs"]:
            cut = [_line(w) for w, c, t in zip(self.kept_where, self.kept_cut, self._used(trained)) if t and any(c)]
            log.info("%s: %d of %d pairs kept are cut by model.max_prompt_length=%s / model.max_length=%s: "
                     "prompt in %d, chosen in %d, rejected in %d (%s)", self.path, counts["pairs"],
                     sum(self._used(trained)),
                     self.tokenization.get("max_prompt_length"), self.tokenization.get("max_length"),
                     counts["prompt"], counts["chosen"], counts["rejected"], _first(cut))

    def hint(self) -> str:
        """What to change when prompts leave no room for the responses."""
        limit, total = self.tokenization.get("max_prompt_length"), self.tokenization.get("max_length")
        if limit is None:
            return (f"; model.max_prompt_length=null leaves prompts whole: set it below model.max_length={total} "
                    f"(e.g. {total // 2}) to cut long prompts from the left instead")
        return f"; set model.max_prompt_length={limit} well below model.max_length={total}"


def _content(rec: PairRecord) -> tuple:
    weights = tuple(rec.chosen_weights or ()), tuple(rec.rejected_weights or ())
    return rec.prompt, rec.chosen, rec.rejected, *weights


def screen_records(records: Sequence[PairRecord], path: str | Path) -> tuple[list[PairRecord], PairsReport]:
    """Leave out repeated pairs and pairs whose responses are the same text; refuse one id on two different pairs."""
    report = PairsReport(Path(path))
    by_id: dict[str, PairRecord] = {}
    by_content: dict[tuple, PairRecord] = {}
    kept = []
    for rec in records:
        content = _content(rec)
        first = by_id.setdefault(rec.id, rec)
        if first is not rec and _content(first) != content:
            raise DataError(
                f"{rec.where}: field 'id' is {rec.id!r}, the id of {_line(first.where)} too, which holds a different "
                "pair: pair ids must be unique (the pairs stage writes '<problem_id>-<rank>'); a file joined from "
                "two pairs files needs new ids for one of them"
            )
        earlier = by_content.setdefault(content, rec)
        if earlier is not rec:
            report.dropped["duplicate"].append(f"{_line(rec.where)} (id {rec.id!r}) repeats {_line(earlier.where)}")
        elif rec.chosen == rec.rejected:
            report.dropped["identical"].append(f"{_line(rec.where)} (id {rec.id!r})")
        else:
            kept.append(rec)
    return kept, report


def screen_tokenized(records: Sequence[PairRecord], pairs: Sequence[TokenizedPair],
                     report: PairsReport) -> tuple[list[PairRecord], list[TokenizedPair]]:
    """Leave out pairs that truncation made degenerate; record the cuts of the others in `report`."""
    kept_records, kept_pairs = [], []
    for rec, pair in zip(records, pairs, strict=True):
        note = f"{_line(rec.where)} (id {rec.id!r})"
        _, chosen_cut, rejected_cut = pair.cut
        if (chosen_cut and len(pair.chosen_ids) <= 1) or (rejected_cut and len(pair.rejected_ids) <= 1):
            prompt_tokens = len(pair.prompt_ids)
            report.dropped["no_room_for_response"].append(f"{note}: prompt of {prompt_tokens} tokens")
        elif pair.chosen_ids == pair.rejected_ids:
            report.dropped["identical_after_truncation"].append(note)
        else:
            kept_records.append(rec)
            kept_pairs.append(pair)
            report.kept_where.append(rec.where)
            report.kept_cut.append(pair.cut)
    return kept_records, kept_pairs


def checked_pairs(path: str | Path, records: Sequence[PairRecord], tokenizer: PreTrainedTokenizerBase, *,
                  prompt_format: str = "plain", max_prompt_length: int | None = None,
                  max_length: int | None = None) -> tuple[list[PairRecord], list[TokenizedPair], PairsReport]:
    """The pairs to train on (records and their tokens, in file order) and the report of what was left out; raises
    DataError naming the file when none is left. Nothing is logged here: the caller logs the report once."""
    tokenization = {"prompt_format": prompt_format, "max_prompt_length": max_prompt_length, "max_length": max_length}
    kept, report = screen_records(records, path)
    report.tokenization = tokenization
    pairs = tokenize_pairs(kept, tokenizer, **tokenization)
    kept, pairs = screen_tokenized(kept, pairs, report)
    if not pairs:
        reasons = "; ".join(f"{len(notes)} {reason} ({DROP_REASONS[reason]}: {_first(notes)})"
                            for reason, notes in report.dropped.items() if notes)
        hint = report.hint() if report.dropped["no_room_for_response"] else ""
        raise DataError(f"{path}: no pair left to train on: all {len(records)} pairs are left out: {reasons}{hint}")
    return kept, pairs, report
