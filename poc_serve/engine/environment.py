"""The process environment an engine prepares for itself before it starts: the vLLM environment
variables that work around failures seen when engines start side by side on one node (GPUs), and
the CPU cores of each worker of a CPU engine."""

from __future__ import annotations

import os
import socket

# The variables prepare_engine_environment may set.
ENGINE_ENVIRONMENT = ("VLLM_DP_MASTER_PORT", "VLLM_DISABLE_COMPILE_CACHE")
CPU_THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"
# What the operator set (engine_env) before any engine of this process started: kept as it is.
_OPERATOR_THREADS_BIND = os.environ.get(CPU_THREADS_BIND)


def prepare_cpu_threads(world_size: int) -> str | None:
    """Give each worker of a CPU engine its own share of this process's cores, unless the operator
    set ``VLLM_CPU_OMP_THREADS_BIND``; returns the value in effect. vllm-cpu's default ("auto")
    binds one worker per NUMA node, so an engine of several workers on a one-node machine refuses
    to start ("Not enough allowed NUMA nodes"). One worker keeps the default; the variable is
    set for every start, so a model switch from TP=2 back to TP=1 in the same replica gets it back.
    """
    if _OPERATOR_THREADS_BIND is not None:
        return _OPERATOR_THREADS_BIND
    if world_size <= 1:
        os.environ.pop(CPU_THREADS_BIND, None)
        return None
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // world_size)
    parts = []
    for rank in range(world_size):
        mine = cores[rank * share:(rank + 1) * share] or [cores[rank % len(cores)]]
        parts.append(f"{mine[0]}-{mine[-1]}" if len(mine) > 1 else str(mine[0]))
    os.environ[CPU_THREADS_BIND] = "|".join(parts)
    return os.environ[CPU_THREADS_BIND]


def prepare_engine_environment(executor_backend: str, compiled: bool) -> dict[str, str]:
    """Set the vLLM environment variables an engine about to start in this process needs, unless
    the operator set them (``engine_env``); returns what was set. The engine core and its workers
    inherit them.

    - ``VLLM_DP_MASTER_PORT`` (Ray executor): vLLM 0.26's ``RayExecutorV2`` searches its
      torch.distributed port from ``VLLM_DP_MASTER_PORT + 100``, i.e. from port 100 when unset.
      Two engines starting together on one node (two Serve replicas) probe the same ports at the
      same moment and one dies with EADDRINUSE (seen on two H100s, 2026-11-27). Each engine starts
      its search at a port the OS has just handed out instead. (An operator-set value puts every
      engine of the node back on one search start. vLLM 0.32's executor binds its TCPStore on
      port 0 and never reads this variable, so this part can go when the GPU build passes 0.26.)
    - ``VLLM_DISABLE_COMPILE_CACHE`` (compiled engines): an engine loading vLLM 0.26's
      torch.compile cache that an earlier engine on the node wrote failed in its first forward
      with "CUDA driver error: invalid argument" (Inductor's Triton launcher, torch 2.11; two
      H100s, 2026-11-27), in every replacement Serve started, so the replica never came back.
      Compiling afresh costs ~40 s per start and has always worked.
    """
    wanted: dict[str, str] = {}
    if executor_backend == "ray":
        with socket.socket() as sock:
            sock.bind(("", 0))
            wanted["VLLM_DP_MASTER_PORT"] = str(sock.getsockname()[1] - 100)
    if compiled:
        wanted["VLLM_DISABLE_COMPILE_CACHE"] = "1"
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    return applied
