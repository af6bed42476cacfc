"""What the tests and the benchmarks share: the independent transformers reference, the
engine checks built on it, and the stand-in engine base (no pytest here; transformers is a core
dependency)."""
