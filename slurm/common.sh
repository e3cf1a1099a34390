# Sourced by the sbatch templates: the environment, the project's Python, and requeue-on-preemption.
# ADPO_SETUP: shell lines run first (modules, conda or venv activation), as the Hydra SLURM launchers run them.
# ADPO_ROOT: the checkout (default: where sbatch was called); ADPO_PYTHON: its interpreter (default .venv/bin/python).
if [ -n "${ADPO_SETUP:-}" ]; then eval "$ADPO_SETUP"; fi
ADPO_ROOT=${ADPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
if [ -z "${ADPO_PYTHON:-}" ]; then
  if [ -x "$ADPO_ROOT/.venv/bin/python" ]; then ADPO_PYTHON="$ADPO_ROOT/.venv/bin/python"; else ADPO_PYTHON=python; fi
fi
export ADPO_ROOT ADPO_PYTHON
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
cd "$ADPO_ROOT"
echo "[adpo] job ${SLURM_JOB_ID:-?} on $(hostname) restart ${SLURM_RESTART_COUNT:-0} at $(date -Is): $*"

# SLURM sends USR1 to this shell (#SBATCH --signal=B:USR1@120) before the time limit or on preemption. Forward it
# to the job step (srun passes it on to its tasks), let the stage save what it can and exit, then put the job back
# in the queue: on restart the stage resumes from its output directory (training checkpoints, finished shards).
ADPO_REQUEUE=0
adpo_on_usr1() {
  ADPO_REQUEUE=1
  echo "[adpo] USR1 at $(date -Is): forwarding to the job step, then requeueing job $SLURM_JOB_ID"
  [ -n "${ADPO_STEP_PID:-}" ] && kill -USR1 "$ADPO_STEP_PID" 2>/dev/null || true
}
trap adpo_on_usr1 USR1

# Run "$@" (an srun command) in the background so that the trap can run, wait until it has really ended, then
# requeue if USR1 came, else return its exit status.
adpo_run_step() {
  "$@" &
  ADPO_STEP_PID=$!
  local status=0
  while true; do
    wait "$ADPO_STEP_PID" && status=0 || status=$?
    kill -0 "$ADPO_STEP_PID" 2>/dev/null || break   # wait returned because of the trap: the step still runs
  done
  if [ "$ADPO_REQUEUE" = 1 ]; then
    echo "[adpo] step ended ($status) after USR1: scontrol requeue $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$status"
}
