#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (root, Debian/Ubuntu): installs slurmctld/slurmd/munge with
# apt-get if missing, runs the daemons with their config, state and logs under $ADPO_SLURM_DIR (/tmp/adpo-slurm).
#   slurm/local_cluster.sh start     # then: eval "$(slurm/local_cluster.sh env)"; sinfo; sbatch ...
#   slurm/local_cluster.sh status
#   slurm/local_cluster.sh stop      # cancels the cluster's jobs, stops the daemons by pid
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${ADPO_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
action=${1:-status}
shift || true
exec "$PY" slurm/local_cluster.py "$action" \
  --dir "${ADPO_SLURM_DIR:-/tmp/adpo-slurm}" "$@"
