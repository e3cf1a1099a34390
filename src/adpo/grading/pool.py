"""Grading many outputs in worker processes, each item bounded in time.

math-verify's own timeout (SIGALRM) works only in a main thread and cannot stop C code, and a concurrent.futures pool
cannot kill a stuck worker; a pebble ProcessPool can: a task past its deadline has its worker killed and replaced.
Items go to workers in small chunks (grading one item takes milliseconds; one task per item would cost more in
messages) with a deadline of timeout_s per item; a chunk that misses it is split and its items retried one by one
with timeout_s each, so only the item that is really stuck is lost -- counted wrong, with Grade.error = "timeout".

Workers are forked by default: they start in milliseconds with this package already imported, and they do not
re-import the caller's main module (a forkserver or spawn worker would, e.g. the eval stage with vLLM). They run only
pure-Python code (regex, sympy), and a worker that ever hung on a lock inherited from the parent's threads would be
killed by the deadline like any stuck item. `start_method="forkserver"` is there for platforms without fork.
"""

from __future__ import annotations

import math
import multiprocessing
import weakref
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError

from tqdm.auto import tqdm

from adpo.grading.core import Grade, _check, grade


def _mp_context(start_method: str):
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(["adpo.grading"])
    return context


def _soft_timeout(timeout_s: float) -> int:
    # math-verify's alarm per parse/verify call (three calls per item), inside the hard deadline.
    return max(1, int(timeout_s // 3))


def _stop_pool(pool) -> None:
    pool.stop()
    pool.join()


def _grade_safely(dataset: str, text: str, gold: str, soft_timeout: int) -> Grade:
    try:
        return grade(dataset, text, gold, soft_timeout)
    except Exception as e:  # grading is meant to be total, but one odd item must never end a run
        return Grade(None, False, f"error: {type(e).__name__}: {e}")


def _grade_chunk(dataset: str, items: list[tuple[str, str]], soft_timeout: int) -> list[Grade]:
    return [_grade_safely(dataset, text, gold, soft_timeout) for text, gold in items]


def _grade_serial(dataset: str, items: Sequence[tuple[str, str]], soft_timeout: int, bar: tqdm) -> list[Grade]:
    grades = []
    for text, gold in items:
        grades.append(_grade_safely(dataset, text, gold, soft_timeout))
        bar.update(1)
    return grades


class Grader:
    """A reusable pool of grading workers. `workers=0` grades in this process (math-verify's own timeouts only).

    timeout_s: the hard deadline of one item (its worker is killed past it); soft_timeout_s: math-verify's own
    per-call alarm (default timeout_s // 3), which ends most slow items without killing anything.

        with Grader(workers=2, timeout_s=10) as grader:
            grades = grader.grade_batch("math", texts, golds)
    """

    def __init__(self, workers: int = 2, timeout_s: float = 10.0, chunk_size: int | None = None,
                 progress: bool = False, start_method: str = "fork", soft_timeout_s: int | None = None):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        self.progress = progress
        self.start_method = start_method
        # math-verify's own alarm per parse/verify call: a slow item ends as wrong without losing its worker.
        self.soft_timeout_s = soft_timeout_s if soft_timeout_s is not None else _soft_timeout(timeout_s)
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            from pebble import ProcessPool

            if self.start_method == "fork":
                # Workers inherit a warm math-verify (import + parser set-up take ~2 s), also after a restart.
                grade("math", "\\boxed{\\frac{1}{2}}", "0.5")

            self._pool = ProcessPool(max_workers=self.workers, context=_mp_context(self.start_method))
            # a Grader dropped without close() does not leave its workers behind
            self._finalizer = weakref.finalize(self, _stop_pool, self._pool)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._finalizer.detach()
            _stop_pool(self._pool)
            self._pool = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def grade_batch(self, dataset: str, texts: Sequence[str], golds: Sequence[str], *,
                    progress: bool | None = None, desc: str = "grading") -> list[Grade]:
        """One Grade per (text, gold), in order. A text that is not a string is graded as an empty answer."""
        _check(dataset)
        if len(texts) != len(golds):
            raise ValueError(f"{len(texts)} texts but {len(golds)} golds")
        items = [(t if isinstance(t, str) else "", str(g)) for t, g in zip(texts, golds)]
        show = self.progress if progress is None else progress
        with tqdm(total=len(items), desc=desc, disable=not show, unit="ans") as bar:
            if not items:
                return []
            if self.workers == 0:
                return _grade_serial(dataset, items, self.soft_timeout_s, bar)
            return self._grade_parallel(dataset, items, bar)

    def _grade_parallel(self, dataset: str, items: list[tuple[str, str]], bar: tqdm) -> list[Grade]:
        pool = self._get_pool()
        soft = self.soft_timeout_s
        size = self.chunk_size or max(1, min(8, math.ceil(len(items) / (4 * self.workers))))
        results: list[Grade | None] = [None] * len(items)
        chunks = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]
        retry: list[int] = []

        def submit(indices: list[int]):
            # each item of a chunk has its own timeout_s: slow-but-finite items never sink their neighbours
            return pool.schedule(_grade_chunk, args=(dataset, [items[i] for i in indices], soft),
                                 timeout=self.timeout_s * len(indices))

        for indices, future in [(c, submit(c)) for c in chunks]:
            try:
                for i, g in zip(indices, future.result()):
                    results[i] = g
                bar.update(len(indices))
            except Exception:  # deadline missed or worker died: find the culprit item by item
                if len(indices) == 1:
                    results[indices[0]] = self._failed(future)
                    bar.update(1)
                else:
                    retry.extend(indices)
        for i, future in [(i, submit([i])) for i in retry]:
            try:
                results[i] = future.result()[0]
            except Exception:
                results[i] = self._failed(future)
            bar.update(1)
        return results  # type: ignore[return-value]

    @staticmethod
    def _failed(future) -> Grade:
        error = future.exception()
        if isinstance(error, FutureTimeoutError):
            return Grade(None, False, "timeout")
        return Grade(None, False, f"worker died: {type(error).__name__}: {error}")


def grade_batch(dataset: str, texts: Sequence[str], golds: Sequence[str], *, workers: int = 2,
                timeout_s: float = 10.0, progress: bool = False, desc: str = "grading") -> list[Grade]:
    """Grade many outputs: `workers` processes (0: in this process), each item bounded by `timeout_s` seconds.

    Returns one Grade(extracted, correct, error) per output, in order; an item that hangs or kills its worker is
    wrong with error set, never an exception. For repeated calls, reuse a Grader to keep its workers.
    """
    with Grader(workers=workers, timeout_s=timeout_s, progress=progress) as grader:
        return grader.grade_batch(dataset, texts, golds, desc=desc)
