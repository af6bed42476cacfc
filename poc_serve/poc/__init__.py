"""PoC math of the protocol: pure torch and scipy, no Ray and no vLLM."""

from poc_serve.poc.artifacts import (
    DEFAULT_DIST_THRESHOLD,
    DEFAULT_FRAUD_THRESHOLD,
    DEFAULT_K_DIM,
    DEFAULT_P_MISMATCH,
    ArtifactVerdict,
    artifact_rows,
    decode_artifact,
    encode_artifact,
    encode_artifacts,
    haar_seeds,
    haar_vectors,
    indices_from_scores,
    is_mismatch,
    judge_artifacts,
    mismatch_p_value,
    nonce_artifacts,
    pick_indices,
    pick_indices_batch,
    pick_scores,
    pick_seed,
)
from poc_serve.poc.calibration import r_target_for, valid_probability
from poc_serve.poc.judgement import HONEST_MISMATCH_RATE, Verdict, judge
from poc_serve.poc.nonces import NonceSequence
from poc_serve.poc.rng import hash32, hash32_scalar, normal, normal_eager, seed_from_string, uniform
from poc_serve.poc.transforms import (
    PROJECTION_DIM,
    Randomization,
    householder_vectors,
    input_embeddings,
    layer_householder,
    layer_reflection,
    layer_transform,
    nonce_distances,
    reflect,
    round_projection,
    stronger_input_seeds,
    unit,
)

__all__ = [
    "HONEST_MISMATCH_RATE", "PROJECTION_DIM", "NonceSequence", "Randomization", "Verdict",
    "hash32", "hash32_scalar", "householder_vectors", "input_embeddings", "judge",
    "layer_householder", "layer_transform", "nonce_distances", "normal", "r_target_for",
    "reflect", "round_projection", "seed_from_string", "uniform", "unit", "valid_probability",
    # PoC v2 (poc-v2.md)
    "DEFAULT_DIST_THRESHOLD", "DEFAULT_FRAUD_THRESHOLD", "DEFAULT_K_DIM", "DEFAULT_P_MISMATCH",
    "ArtifactVerdict", "artifact_rows", "decode_artifact", "encode_artifact", "encode_artifacts",
    "haar_seeds", "haar_vectors", "indices_from_scores", "is_mismatch", "judge_artifacts",
    "layer_reflection", "mismatch_p_value", "nonce_artifacts", "normal_eager", "pick_indices",
    "pick_indices_batch", "pick_scores", "pick_seed", "stronger_input_seeds",
]
