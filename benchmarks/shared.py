"""What the GPU benchmark scripts share: result lines, the model and reference phases, the engine
under test, GPU clock sampling, and running each phase in a process of its own.

Every script runs as ``python benchmarks/<script>.py`` from the repository root with
``PYTHONPATH=$PWD``; its phases run in subprocesses so that GPU memory is free between them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("OUT", ".")


def emit(d: dict, file: str = "engine_gpu.jsonl") -> None:
    """Print one result line and append it to $OUT/``file``."""
    line = json.dumps(d, default=str)
    print("RESULT " + line, flush=True)
    with open(os.path.join(OUT, file), "a") as f:
        f.write(line + "\n")


def sync() -> None:
    import torch
    torch.cuda.synchronize()


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The options of the model and reference phases, which every script runs."""
    p.add_argument("--phase", help=argparse.SUPPRESS)  # set on the subprocess that runs one phase
    p.add_argument("--model", default="poc-qwen3-0.6b-random", help="model: the built-in random model built")
    p.add_argument("--model-dir", default="/tmp/poc_qwen3_0.6b")
    p.add_argument("--seq-lens", default="64,256", help="comma-separated seq_lens checked and timed")


def seq_lens(a) -> list[int]:
    return [int(s) for s in a.seq_lens.split(",")]


def phase_model(a) -> None:
    from poc_serve.models.tiny import BUILTIN_MODELS, build_random_checkpoint
    t = time.time()
    if not os.path.exists(os.path.join(a.model_dir, "config.json")):
        build_random_checkpoint(a.model_dir, *BUILTIN_MODELS[a.model])
    emit({"phase": "model", "model": a.model, "seconds": round(time.time() - t, 1)})


def phase_reference(a) -> None:
    """The transformers reference's answers (bf16, this GPU) in ``<model-dir>/reference.pt``."""
    import torch

    from poc_serve.testing.engine_checks import reference_results
    from poc_serve.testing.reference import load_reference_model
    model = load_reference_model(a.model_dir, torch.bfloat16).cuda()
    out = reference_results(model, seq_lens(a))
    torch.save(out, os.path.join(a.model_dir, "reference.pt"))
    emit({"phase": "reference", "keys": list(out)})


def load_reference(a):
    """The reference phase's answers, or None when it has not run."""
    import torch
    path = os.path.join(a.model_dir, "reference.pt")
    return torch.load(path) if os.path.exists(path) else None


def engine_config(a, settings: dict):
    """The engine under test: ``settings`` (EngineConfig fields) over the benchmarks' defaults
    (the model in ``--model-dir``, 65,536-token forwards, no tokenizer)."""
    from poc_serve.engine.config import EngineConfig
    return EngineConfig(**{"model": a.model_dir, "max_num_batched_tokens": 65536, "max_model_len": 2048,
                           "skip_tokenizer_init": True, **settings})


def with_settings(config, settings: dict):
    """``config`` with ``settings`` applied, validated like a new EngineConfig."""
    return type(config).model_validate({**config.model_dump(), **settings})


def run_phases(script: str, phases: str, runs: dict[str, list[dict]] | None = None) -> int:
    """Run each of ``phases`` (comma-separated) of ``script`` in a process of its own, with this
    process's command line plus ``--phase`` (argparse keeps an option's last value). ``runs`` maps
    a phase to option overrides, one run each (an engine phase per engine config). Returns the
    highest exit status."""
    import torch
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return 0
    env = dict(os.environ, PYTHONPATH=ROOT + ":" + os.environ.get("PYTHONPATH", ""))
    worst = 0
    for phase in phases.split(","):
        for overrides in (runs or {}).get(phase, [{}]):
            cmd = [sys.executable, script, *sys.argv[1:], "--phase", phase]
            for key, value in overrides.items():
                cmd += [f"--{key.replace('_', '-')}", value]
            t = time.time()
            rc = subprocess.run(cmd, env=env).returncode
            print(f"PHASE {phase} {overrides} rc={rc} {time.time() - t:.0f}s", flush=True)
            worst = max(worst, rc)
    return worst


def main(p: argparse.ArgumentParser, script: str, phases: dict, engine_phase: str) -> None:
    """Parse the command line, then run one phase here (``--phase``) or every phase of
    ``--phases`` in processes of their own, ``engine_phase`` once per config of ``--engine-kwargs``
    (one JSON object or a list of them); exit with the highest status."""
    a = p.parse_args()
    if a.phase:
        return phases[a.phase](a)
    configs = json.loads(a.engine_kwargs)
    configs = configs if isinstance(configs, list) else [configs]
    sys.exit(run_phases(script, a.phases, {engine_phase: [{"engine_kwargs": json.dumps(c)} for c in configs]}))


def engine_under_test(a):
    """(label, its settings, an engine not yet started) of ``--engine-kwargs`` for one phase: a
    "label", an "env" of environment variables set here, the rest EngineConfig fields."""
    from poc_serve.engine.engine import PoCEngine
    settings = json.loads(a.engine_kwargs)
    label = settings.pop("label", "default")
    os.environ.update(settings.pop("env", {}))
    return label, settings, PoCEngine(engine_config(a, settings))


class GpuClockSampler:
    """Samples SM clock and power with nvidia-smi while a rate is timed: a rate below the summed
    kernel time of a (short) profile may come from clocks dropping under sustained load."""

    def __enter__(self) -> "GpuClockSampler":
        self.summary: dict = {}
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw",
                                          "--format=csv,noheader,nounits", "-i", "0", "-lms", "200"],
                                         stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:  # no NVIDIA driver tools (a CPU smoke run)
            self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        rows = [line.split(",") for line in self.proc.communicate()[0].splitlines() if "," in line]
        clocks = sorted(float(r[0]) for r in rows)
        self.summary = {"sm_mhz_min": clocks[0], "sm_mhz_median": clocks[len(clocks) // 2],
                        "power_w_max": max(float(r[1]) for r in rows)} if rows else {}
