"""A real single-node SLURM cluster on localhost, everything under one scratch directory.

For tests and for trying sweeps out before a real cluster: Debian's slurmctld/slurmd/munge (installed with apt-get
when missing and allowed), a generated slurm.conf with cgroup-free plugins, ports picked free so that two clusters
never collide, and daemons stopped by the pids in their pid files. Without slurmdbd there is no accounting, so the
scratch `bin/` holds a small `sacct` that answers submitit's state queries from `squeue` (finished jobs stay there
for MinJobAge seconds); put it first on PATH (see `env()`), or submitit waits forever for a job that died.

    python slurm/local_cluster.py start --dir /tmp/adpo-slurm   # prints the exports to use the cluster
    python slurm/local_cluster.py status --dir /tmp/adpo-slurm
    python slurm/local_cluster.py stop --dir /tmp/adpo-slurm

Test tooling, not part of the installed packages: tests/slurm_cluster.py imports it from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scontrol")
DEFAULT_DIR = Path(os.environ.get("ADPO_SLURM_DIR", "/tmp/adpo-slurm"))

SACCT_SHIM = """#!/usr/bin/env bash
# Stand-in for `sacct` on a cluster without accounting (no slurmdbd): answers
# `sacct -o JobID,State,NodeList --parsable2 -j ID...` (what submitit asks) from squeue, which keeps finished jobs
# for MinJobAge seconds.
ids=()
while [ $# -gt 0 ]; do
  case "$1" in
    -j|--jobs) ids+=("$2"); shift 2 ;;
    -j*) ids+=("${1#-j}"); shift ;;
    --jobs=*) ids+=("${1#--jobs=}"); shift ;;
    *) shift ;;
  esac
done
echo "JobID|State|NodeList"
[ ${#ids[@]} -eq 0 ] && exit 0
squeue -h -r -t all -j "$(IFS=,; echo "${ids[*]}")" -o '%i|%T|%N' 2>/dev/null || true
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


def missing_binaries() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [b for b in BINARIES if shutil.which(b, path=search) is None]


def ensure_installed(log=print) -> None:
    """Install Debian's SLURM and munge packages with apt-get when they are missing (root only)."""
    if not missing_binaries():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"SLURM is not installed ({', '.join(missing_binaries())} missing) and cannot be installed here: "
            f"run as root on Debian/Ubuntu, or `apt-get install {' '.join(PACKAGES)}`"
        )
    log(f"installing {' '.join(PACKAGES)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if missing_binaries():
        raise RuntimeError(f"apt-get finished but {', '.join(missing_binaries())} still missing")


class LocalCluster:
    """One slurmctld + one slurmd (+ munged) on localhost, configured and logging under `root`."""

    def __init__(self, root: str | Path = DEFAULT_DIR, cpus: int | None = None, memory_mb: int | None = None,
                 gpus: int = 0):
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        # Leave some memory to the rest of the machine; without RealMemory every `--mem` request fails.
        self.memory_mb = memory_mb or int(_total_memory_mb() * 0.9)
        # gpus > 0: a node shaped like a GPU node (count-only GPU GRES, no devices), so that the GPU requests of the
        # paper's commands (--gpus-per-node=8, 64 CPUs, 480 GB) are scheduled here as they are on a cluster; the
        # CPUs and memory declared may then exceed the machine's (slurmd's config_overrides).
        self.gpus = gpus
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"

    # --- what users of the cluster need -------------------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment that talks to this cluster: SLURM_CONF, and the sacct stand-in first on PATH."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", ""), "/usr/sbin"])
        return env

    def exports(self) -> str:
        return f"export SLURM_CONF={self.conf}\nexport PATH={self.bin}:$PATH\n"

    def pid_files(self) -> dict[str, Path]:
        return {
            "slurmd": self.root / "slurmd.pid",
            "slurmctld": self.root / "slurmctld.pid",
            "munged": self.munge_dir / "munged.pid",
        }

    def pids(self) -> dict[str, int]:
        """Daemons of this cluster that are alive, by name."""
        alive = {}
        for name, path in self.pid_files().items():
            try:
                pid = int(path.read_text().strip())
                os.kill(pid, 0)
            except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
                continue
            alive[name] = pid
        return alive

    def node_state(self) -> str | None:
        # Without its controller, sinfo retries until its timeout: a stopped cluster has no node state to ask for.
        if "slurmctld" not in self.pids():
            return None
        try:
            result = self._run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        return result.stdout.strip() or None if result.returncode == 0 else None

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def write_config(self) -> None:
        for d in (self.root, self.bin, self.root / "state", self.root / "spool", self.root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        settings = json.loads((self.root / "ports.json").read_text()) if (self.root / "ports.json").exists() else {}
        ports = {"ctld": settings.get("ctld") or _free_port(), "slurmd": settings.get("slurmd") or _free_port()}
        (self.root / "ports.json").write_text(json.dumps(ports))
        self.conf.write_text(
            f"""# Single-node cluster on localhost, written by slurm/local_cluster.py
ClusterName=adpo-local
SlurmctldHost=localhost
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job (120 s by default); short here so that tests see the restart soon.
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.pid_files()['slurmctld']}
SlurmdPidFile={self.pid_files()['slurmd']}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to squeue (and the sacct stand-in) this long.
MinJobAge=600
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or preempted.
KillWait=15
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1
{self._gpu_settings()}NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} \
{f"Gres=gpu:{self.gpus} " if self.gpus else ""}State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.root / "gres.conf").write_text(self._gres_conf())  # slurmd reads gres.conf beside slurm.conf
        sacct = self.bin / "sacct"
        sacct.write_text(SACCT_SHIM)
        sacct.chmod(0o755)

    def _gres_conf(self) -> str:
        """GPUs as device files (slurmd counts a GPU only with a File=): character devices like /dev/null, which
        SLURM hands out and exports as CUDA_VISIBLE_DEVICES; nothing on this machine can use them as a GPU."""
        if not self.gpus:
            return ""
        devices = self.root / "dev"
        devices.mkdir(exist_ok=True)
        for index in range(self.gpus):
            device = devices / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return f"AutoDetect=off\nNodeName=localhost Name=gpu File={devices}/nvidia[0-{self.gpus - 1}]\n"

    def _gpu_settings(self) -> str:
        return "GresTypes=gpu\nSlurmdParameters=config_overrides\n" if self.gpus else ""

    def start(self, timeout: float = 60.0) -> None:
        """Start munged, slurmctld and slurmd, and wait until the node is idle."""
        if self.pids():
            if self.node_state() in ("idle", "mix", "alloc"):
                return
            self.stop()
        self.write_config()
        self._start_munged()
        sbin = Path("/usr/sbin")
        slurmctld = shutil.which("slurmctld") or str(sbin / "slurmctld")
        slurmd = shutil.which("slurmd") or str(sbin / "slurmd")
        # -i: ignore state saved by an earlier run of this cluster (jobs of a previous session are not ours).
        self._run([slurmctld, "-f", str(self.conf), "-i"], timeout=30)
        self._run([slurmd, "-f", str(self.conf), "-N", "localhost"], timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.node_state()
            if state and state.rstrip("*~#") in ("idle", "mix", "alloc"):
                return
            time.sleep(0.2)
        logs = "\n".join(self._tail(self.root / "log" / name) for name in ("slurmctld.log", "slurmd.log"))
        self.stop()
        raise RuntimeError(f"local SLURM node not idle after {timeout:.0f} s (state {state!r}); logs:\n{logs}")

    def _start_munged(self) -> None:
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.munge_dir, "munge", "munge")
        self.munge_dir.chmod(0o755)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            self._run(["mungekey", "--create", "--keyfile", str(key)], timeout=30)
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        munged = shutil.which("munged") or "/usr/sbin/munged"
        self._run(
            [
                "runuser", "-u", "munge", "--", munged,
                f"--socket={self.munge_socket}",
                f"--pid-file={self.pid_files()['munged']}",
                f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
            timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        check = subprocess.run(
            f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}",
            shell=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if check.returncode != 0:
            raise RuntimeError(f"munged did not start: {check.stderr}\n{self._tail(self.munge_dir / 'munged.log')}")

    def stop(self, timeout: float = 15.0) -> None:
        """Cancel this cluster's jobs, then TERM each daemon by its pid, wait, and KILL what is left."""
        if "slurmctld" in self.pids():
            self._cancel_jobs(timeout=timeout + 20)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids().get(name)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        # A job step outliving its slurmd would hold cores: kill this cluster's slurmstepd processes, if any.
        for pid in _stepd_pids(str(self.conf)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _cancel_jobs(self, timeout: float) -> None:
        active = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING,SIGNALING,STAGE_OUT"
        listing = self._run(["squeue", "-h", "-t", active, "-o", "%A"], check=False, timeout=10)
        jobs = listing.stdout.split()
        if not jobs:
            return
        self._run(["scancel", *jobs], check=False, timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._run(["squeue", "-h", "-t", active, "-o", "%A"], check=False, timeout=10).stdout.split():
                return
            time.sleep(0.2)

    def status(self) -> dict:
        return {"root": str(self.root), "conf": str(self.conf), "daemons": self.pids(), "node": self.node_state()}

    # --- helpers ---------------------------------------------------------------------------------------------------
    def _run(self, cmd: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    @staticmethod
    def _tail(path: Path, lines: int = 30) -> str:
        if not path.exists():
            return f"({path} missing)"
        return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (it only waits for its parent to reap it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _stepd_pids(conf: str) -> list[int]:
    """slurmstepd processes started by this cluster's slurmd (they inherit its SLURM_CONF)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            if f"SLURM_CONF={conf}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "status", "env"])
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="scratch directory for config, state and logs")
    parser.add_argument("--cpus", type=int, default=None)
    parser.add_argument("--memory-mb", type=int, default=None)
    parser.add_argument("--gpus", type=int, default=0,
                        help="declare a GPU-shaped node with this many (count-only) GPUs")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir, cpus=args.cpus, memory_mb=args.memory_mb, gpus=args.gpus)
    if args.action == "start":
        ensure_installed(log=lambda m: print(m, file=sys.stderr))
        cluster.start()
        print(f"# local SLURM cluster up ({cluster.root}); to use it:", file=sys.stderr)
        print(cluster.exports(), end="")
    elif args.action == "stop":
        cluster.stop()
        print(f"stopped local SLURM cluster in {cluster.root}", file=sys.stderr)
    elif args.action == "env":
        print(cluster.exports(), end="")
    else:
        status = cluster.status()
        print(json.dumps(status, indent=2))
        return 0 if status["daemons"] and status["node"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
