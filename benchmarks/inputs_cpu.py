"""Time the input embeddings of 1024 nonces at seq_len 64, hidden 1024 (67 M normals) on the
CPU, or on CUDA when present (`--device cuda`)."""

import argparse
import time

import torch

from poc_serve.poc import input_embeddings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--nonces", type=int, default=1024)
    a = p.parse_args()
    run = lambda: input_embeddings("bench", "key", range(a.nonces), 64, 1024, a.device, torch.bfloat16)  # noqa: E731
    run()
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    run()
    sync()
    print(f"input embeddings {a.nonces} x 64 x 1024 on {a.device}: {(time.perf_counter() - t) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
