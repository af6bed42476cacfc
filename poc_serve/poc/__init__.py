"""PoC math of the protocol: pure torch and scipy, no Ray and no vLLM."""

from poc_serve.poc.calibration import r_target_for, valid_probability
from poc_serve.poc.judgement import HONEST_MISMATCH_RATE, Verdict, judge
from poc_serve.poc.nonces import NonceSequence
from poc_serve.poc.rng import hash32, hash32_scalar, normal, seed_from_string, uniform
from poc_serve.poc.transforms import (
    PROJECTION_DIM,
    Randomization,
    householder_vectors,
    input_embeddings,
    layer_householder,
    layer_transform,
    nonce_distances,
    reflect,
    round_projection,
    unit,
)

__all__ = [
    "HONEST_MISMATCH_RATE", "PROJECTION_DIM", "NonceSequence", "Randomization", "Verdict",
    "hash32", "hash32_scalar", "householder_vectors", "input_embeddings", "judge",
    "layer_householder", "layer_transform", "nonce_distances", "normal", "r_target_for",
    "reflect", "round_projection", "seed_from_string", "uniform", "unit", "valid_probability",
]
