"""poc_serve: a Ray Serve Proof-of-Compute node over a vLLM engine."""
