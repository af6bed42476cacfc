"""What the tests and the GPU benchmarks share: the independent transformers reference and the
engine checks built on it (no pytest here; transformers is a core dependency)."""
