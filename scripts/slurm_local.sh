#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (root, Debian/Ubuntu): installs slurmctld/slurmd/munge with
# apt-get if missing, runs the daemons with their config, state and logs under $ADPO_SLURM_DIR (/tmp/adpo-slurm).
#   scripts/slurm_local.sh start     # then: eval "$(scripts/slurm_local.sh env)"; sinfo; sbatch ...
#   scripts/slurm_local.sh status
#   scripts/slurm_local.sh stop      # cancels the cluster's jobs, stops the daemons by pid
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${ADPO_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
action=${1:-status}
shift || true
exec env PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m adpo.slurm.local_cluster "$action" \
  --dir "${ADPO_SLURM_DIR:-/tmp/adpo-slurm}" "$@"
