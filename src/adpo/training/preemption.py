"""Checkpoint, then stop, when the scheduler says the job is about to end.

SLURM sends a warning signal before the time limit or a preemption: USR1 from the sbatch templates
(`#SBATCH --signal=B:USR1@120`, forwarded by slurm/common.sh and by torchrun), USR2 from submitit's jobs
(`--signal=USR2@120`, the Hydra launchers; submitit's own handler requeues the job once we hand the signal back), and
TERM when it stops a job; the pipeline forwards TERM and INT to the stage it runs. A checkpoint is a
collective operation, so the ranks first agree that one of them was signalled, at a step boundary, then all save.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Remembers the first stop signal; `agreed()` tells every rank whether any rank got one."""

    def __init__(self, signals: Sequence[signal.Signals] = STOP_SIGNALS):
        self.signum: int | None = None
        self._previous: dict[int, Callable | int | None] = {}
        for signum in signals:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:  # the caller chose to ignore it (nohup): keep that choice
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        if self.signum is None:
            log.warning("got %s: checkpointing after the current step, then stopping",
                        signal.Signals(signum).name)
        self.signum = self.signum or signum

    def agreed(self, world_size: int) -> bool:
        flag = torch.tensor([0.0 if self.signum is None else 1.0])
        if world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def stop(self) -> None:
        """After the checkpoint: hand the signal to whoever handled it before us (submitit requeues the job there),
        else exit with the conventional status of a signalled process."""
        signum = self.signum or signal.SIGTERM
        previous = self._previous.get(signum)
        self.restore()
        if callable(previous):
            previous(signum, None)
        sys.exit(128 + signum)
