#!/usr/bin/env bash
# Submit one configuration's whole chain as SLURM jobs, each starting only after the previous one succeeded:
#   prepare -> sample -> pairs -> [weights, when the method uses weights] -> train -> eval   (--dependency=afterok)
#   slurm/submit_chain.sh experiment=paper model=llama3_8b data=gsm8k method=cadpo seed=1
#   slurm/submit_chain.sh --dry-run ...            # print the sbatch commands, submit nothing
#   slurm/submit_chain.sh --from train ...         # start at a later stage (earlier outputs exist)
# Every argument not an option is a Hydra override given to every stage. sbatch options per stage can be set with
# ADPO_SBATCH_<STAGE> (e.g. ADPO_SBATCH_TRAIN="--nodes=2 --partition=gpu"); ADPO_SBATCH for all of them.
# If a stage fails, the later jobs never start: SLURM cancels them (--kill-on-invalid-dep=yes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dry_run=0
from=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --from) from=$2; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done

# The chain's stages for these overrides (the weights stage when the composed method uses weights), from the
# registry; composing the config here also fails fast on a bad override, before anything is queued.
PY=${ADPO_PYTHON:-$here/../.venv/bin/python}
[ -x "$PY" ] || PY=python3
read -r -a stages <<< "$("$PY" -m adpo.registry chain "${args[@]}")"
[ "${#stages[@]}" -gt 0 ] || exit 2
from=${from:-${stages[0]}}
case " ${stages[*]} " in *" $from "*) ;; *) echo "--from: '$from' is not one of: ${stages[*]}" >&2; exit 2 ;; esac

previous=""
started=0
for stage in "${stages[@]}"; do
  [ "$stage" = "$from" ] && started=1
  [ "$started" = 1 ] || continue
  upper=$(echo "$stage" | tr a-z A-Z)
  per_stage_var="ADPO_SBATCH_$upper"
  opts=(--parsable --job-name="adpo-$stage")
  [ -n "$previous" ] && opts+=(--dependency="afterok:$previous" --kill-on-invalid-dep=yes)
  # shellcheck disable=SC2206  # word splitting of the user's sbatch options is intended
  opts+=(${ADPO_SBATCH:-} ${!per_stage_var:-})
  case "$stage" in
    train) cmd=(sbatch "${opts[@]}" "$here/train.sbatch" "${args[@]}") ;;
    prepare|pairs) cmd=(sbatch "${opts[@]}" --gpus-per-node=0 "$here/generate.sbatch" "$stage" "${args[@]}") ;;
    *) cmd=(sbatch "${opts[@]}" "$here/generate.sbatch" "$stage" "${args[@]}") ;;
  esac
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    previous="<$stage>"
  else
    previous=$("${cmd[@]}")
    previous=${previous%%;*}
    echo "$stage $previous"
  fi
done
