"""The sharded, resumable runner: shard files, resumption after a failure, and refusing stale shards."""

from __future__ import annotations

import json

import pytest

from adpo.config_diff import OutputConflict
from adpo.generation.shards import iter_shard_rows, run_sharded, shard_path

ITEMS = [{"id": f"q{i}", "x": i} for i in range(10)]


class Recorder:
    """A process() that squares x (two rows per item, like n=2 samples), records the shards it saw, and can fail."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_at = fail_at

    def __call__(self, items, shard_index):
        if shard_index == self.fail_at:
            raise RuntimeError("killed")
        self.calls.append(shard_index)
        return [{"id": it["id"], "k": k, "y": it["x"] ** 2 + k} for it in items for k in range(2)]


def run(out_dir, process, items=ITEMS, shard_size=3, fingerprint="a"):
    return run_sharded(items, process, out_dir, item_id=lambda it: it["id"], shard_size=shard_size,
                       fingerprint=fingerprint, progress=False)


def expected_rows(items=ITEMS):
    return [{"id": it["id"], "k": k, "y": it["x"] ** 2 + k} for it in items for k in range(2)]


def test_rows_come_back_in_item_order_from_shard_files(tmp_path):
    rows = run(tmp_path, Recorder())
    assert rows == expected_rows()
    assert sorted(p.name for p in tmp_path.glob("shard-*.jsonl")) == [f"shard-{i:05d}.jsonl" for i in range(4)]
    last = [json.loads(line) for line in shard_path(tmp_path, 3).read_text().splitlines()]
    assert [r["id"] for r in last] == ["q9", "q9"]
    assert list(iter_shard_rows(tmp_path)) == rows


def test_failed_run_resumes_at_the_first_missing_shard(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, Recorder(fail_at=2))
    assert [p.name for p in sorted(tmp_path.glob("shard-*.jsonl"))] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.jsonl")}
    with pytest.raises(FileNotFoundError, match="unfinished"):
        list(iter_shard_rows(tmp_path, num_shards=4))

    resumed = Recorder()
    rows = run(tmp_path, resumed)
    assert resumed.calls == [2, 3]
    assert rows == expected_rows()
    assert all(shard_path(tmp_path, i).stat().st_mtime_ns == before[shard_path(tmp_path, i).name] for i in (0, 1))

    again = Recorder()
    assert run(tmp_path, again) == rows and again.calls == []


def test_shards_of_the_same_work_at_another_shard_size_are_redone(tmp_path):
    run(tmp_path, Recorder())
    redo = Recorder()
    rows = run(tmp_path, redo, shard_size=4)
    assert redo.calls == [0, 1, 2]
    assert rows == expected_rows()
    assert len(list(tmp_path.glob("shard-*.jsonl"))) == 3


# Until issue 10 these were deleted and redone ("starting over"); shards made for other work are now kept.
@pytest.mark.parametrize("change, differs", [(dict(fingerprint="b"), "fingerprint: a -> b"),
                                             (dict(items=ITEMS[:7]), "items.count: 10 -> 7")])
def test_shards_made_for_other_work_stop_the_run_and_stay(tmp_path, change, differs):
    run(tmp_path, Recorder())
    before = {p.name: p.read_bytes() for p in tmp_path.glob("shard-*.jsonl")}
    redo = Recorder()
    with pytest.raises(OutputConflict, match=differs) as refused:
        run(tmp_path, redo, **change)
    assert str(tmp_path) in str(refused.value) and redo.calls == []
    assert {p.name: p.read_bytes() for p in tmp_path.glob("shard-*.jsonl")} == before


def test_a_recorded_fingerprint_dict_names_the_keys_that_differ(tmp_path):
    made_for = {"stage": "sample", "config": {"model": {"name_or_path": "/a"}, "sampling": {"temperature": 1.0}}}
    run(tmp_path, Recorder(), fingerprint=made_for)
    other = {"stage": "sample", "config": {"model": {"name_or_path": "/b"}, "sampling": {"temperature": 1.0}}}
    with pytest.raises(OutputConflict, match="model.name_or_path: /a -> /b"):
        run(tmp_path, Recorder(), fingerprint=other)
    again = Recorder()
    assert run(tmp_path, again, fingerprint=made_for) == expected_rows() and again.calls == []


def test_a_plan_that_recorded_only_a_hash_resumes_its_own_config_and_refuses_others(tmp_path):
    made_for = {"stage": "eval", "config": {"eval": {"num_shots": 2}}}
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, Recorder(fail_at=1), fingerprint=made_for)
    plan = json.loads((tmp_path / "shards.json").read_text())
    del plan["made_for"]  # as written before configs were recorded
    (tmp_path / "shards.json").write_text(json.dumps(plan))
    with pytest.raises(OutputConflict, match="stored config is unknown"):
        run(tmp_path, Recorder(), fingerprint={"stage": "eval", "config": {"eval": {"num_shots": 4}}})
    resumed = Recorder()
    assert run(tmp_path, resumed, fingerprint=made_for) == expected_rows() and resumed.calls == [1, 2, 3]
    assert "made_for" in json.loads((tmp_path / "shards.json").read_text())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run(tmp_path, Recorder(), items=ITEMS + ITEMS[:1])
    with pytest.raises(ValueError, match="shard_size"):
        run(tmp_path, Recorder(), shard_size=0)


def test_no_items_is_an_empty_run(tmp_path):
    assert run(tmp_path, Recorder(), items=[]) == []
