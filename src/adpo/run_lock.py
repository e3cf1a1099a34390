"""One run per output directory: `output_lock(cfg, config_name)` holds an exclusive flock on the output's lock file.

Two runs writing one directory corrupt each other (interleaved shards, one log file written twice, one run deleting
the other's temporaries), so a second run on a directory that a live run holds is refused at once, with a message
naming the holder (pid, host, command, start time) and the lock file.

Which lock: the pipeline (config_name "pipeline") locks its `paths.root`, in `<root>/.pipeline.lock` (the root is
never swapped whole, and its parent may not be ours to write); a stage locks its `output_dir`, in a sibling
`.<name>.lock` beside it, because adpo.io.atomic_directory replaces the directory whole and would take a lock file
inside it along. The pipeline's stages run as subprocesses and lock their own directories (other files), and the
pipeline's descriptor is close-on-exec, so the parent never refuses its children. A Hydra sweep in one process (the
serial launcher) takes and releases each job's lock in turn; SLURM array jobs of a sweep write different directories
and so lock different files. Under torch.distributed (torchrun, the deepspeed launcher) only global rank 0 takes the
lock: the other ranks of the same run share its directory by design.

Why flock: the kernel releases it when its holder dies, even by SIGKILL, so a killed run leaves at most a stale file,
never a stale lock; the next run gets the lock, reports the dead holder it replaces and takes over. On NFS, flock
works on NFSv4 (Linux maps it to NFS byte-range locks, which the server arbitrates across hosts) and on NFSv3 with
lockd; with `-o nolock` (or Lustre without `-o flock`) locks are local to one host or unsupported: an unsupported
lock is reported and the run goes on unlocked rather than not at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PIPELINE_LOCK = ".pipeline.lock"


class OutputInUse(RuntimeError):
    """Another live run holds the lock of this output directory."""


def lock_target(cfg: DictConfig, config_name: str) -> tuple[Path, Path] | None:
    """(the directory, its lock file) for this run, or None when it has no output to lock (or is a rank other than
    0 of a distributed run)."""
    if config_name == "pipeline":
        root = OmegaConf.select(cfg, "paths.root", default=None)
        return (Path(str(root)), Path(str(root)) / PIPELINE_LOCK) if root else None
    out = cfg.get("output_dir")
    if out is None or not _is_lock_rank():
        return None
    out = Path(str(out))
    return out, out.parent / f".{out.name}.lock"


def _is_lock_rank() -> bool:
    """False on ranks other than 0 of a torch.distributed run (torchrun and deepspeed set RANK and WORLD_SIZE)."""
    try:
        return int(os.environ.get("RANK", "0")) == 0 or int(os.environ.get("WORLD_SIZE", "1")) <= 1
    except ValueError:
        return True


def _record(config_name: str, directory: str) -> dict:
    command = getattr(sys, "orig_argv", sys.argv)  # as typed (python -m ...), before Hydra's shorthands
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(command),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"), "config": config_name,
            "directory": directory}


def read_holder(path: Path, attempts: int = 10) -> dict | None:
    """The record a holder wrote in its lock file (None when empty or unreadable). A holder writes it right after
    taking the lock, so an empty file is retried briefly."""
    for attempt in range(attempts):
        try:
            text = path.read_text()
            if text.strip():
                return json.loads(text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if attempt + 1 < attempts:
            time.sleep(0.1)
    return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown run (its lock file holds no record yet)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
            f"command: {holder.get('command')}")


# Locks this process holds, by lock file: re-entered (a guarded run inside another, in one process) rather than
# refused, since a second flock on a new descriptor would conflict with our own.
_held: dict[str, list] = {}


@contextlib.contextmanager
def output_lock(cfg: DictConfig, config_name: str) -> Iterator[Path | None]:
    """Hold the lock of this run's output for the duration of the block; refuse (OutputInUse) when another live
    run holds it. Yields the lock file (None: nothing locked)."""
    if config_name == "pipeline" and OmegaConf.select(cfg, "pipeline.dry_run", default=False):
        yield None  # a dry run only prints the plan: it may look at a root another run is writing
        return
    target = lock_target(cfg, config_name)
    if target is None:
        yield None
        return
    directory, path = target
    key = str(path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(directory, path, config_name)
    if fd is None:
        yield None
        return
    _held[key] = [fd, 1]
    try:
        yield path
    finally:
        del _held[key]
        _release(path, fd)


def refusal(directory: Path, path: Path, holder: dict | None, config_name: str) -> str:
    stop = f" (kill {holder.get('pid')} on {holder.get('host')})" if holder else ""
    key = "paths.root" if config_name == "pipeline" else "output_dir"
    return (f"{directory} is in use by another run: {describe(holder)} (lock file: {path}). Two runs writing one "
            f"directory corrupt each other's files: wait for that run to finish or stop it{stop}, or give this run "
            f"another directory ({key}=...).")


def _acquire(directory: Path, path: Path, config_name: str) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # close-on-exec (PEP 446): children never inherit it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputInUse(refusal(directory, path, read_holder(path), config_name)) from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                log.warning("run lock: the file system of %s does not support flock (%s): this run is NOT protected "
                            "against a second run on %s (on NFS, mount with locking; on Lustre, -o flock)",
                            path, e.strerror, directory)
                return None
            raise
        # The previous holder may have removed the file between our open and our flock: then we locked a file
        # nobody else will open; start again on the one at the path now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        break
    left = read_holder(path, attempts=1)
    if left:
        alive = left.get("host") == socket.gethostname() and _pid_alive(left.get("pid"))
        log.warning("run lock: taking over the lock left by %s: not running (%s); directory %s, lock file %s",
                    describe(left), "its pid now belongs to another process" if alive else "killed or crashed",
                    directory, path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_record(config_name, str(directory))) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        _release(path, fd)
        raise
    return fd


def _release(path: Path, fd: int) -> None:
    # Removed while still held, so that a run waiting on this file notices (samestat above) and takes a new one.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


def _pid_alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True
