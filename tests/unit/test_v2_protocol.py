"""The PoC v2 API's models: other keys ignored, unknown params keys 422, defaults of the spec."""

import pytest
from pydantic import ValidationError

from poc_serve.serve.pow_v2.protocol import GenerateRequest, GenerationInit, StatTest

ROUND = {"block_hash": "bh", "block_height": 7, "public_key": "pk", "node_id": 0, "node_count": 1,
         "params": {"model": "m", "seq_len": 1024}}


def test_init_generate_defaults_and_ignored_keys():
    body = GenerationInit.model_validate({**ROUND, "random_seed": 5, "r_target": 1.3})
    assert (body.group_id, body.n_groups, body.batch_size, body.url, body.poc_stronger_rng) == (0, 1, 32, None, False)
    assert body.params.k_dim == 12
    assert body.round_key() == GenerationInit.model_validate({**ROUND, "batch_size": 64}).round_key()
    assert body.round_key() != GenerationInit.model_validate({**ROUND, "url": "http://x"}).round_key()


@pytest.mark.parametrize("params", [{"model": "m", "seq_len": 8, "kdim": 12}, {"model": "m"}, {"seq_len": 8}])
def test_params_are_strict(params):
    with pytest.raises(ValidationError):
        GenerationInit.model_validate({**ROUND, "params": params})


@pytest.mark.parametrize("missing", ["block_hash", "block_height", "public_key", "node_id", "node_count", "params"])
def test_required_keys(missing):
    with pytest.raises(ValidationError):
        GenerationInit.model_validate({k: v for k, v in ROUND.items() if k != missing})
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate({**{k: v for k, v in ROUND.items() if k != missing}, "nonces": [1]})


def test_generate_defaults_and_nonce_checks():
    body = GenerateRequest.model_validate({**ROUND, "nonces": [3, 1], "node_id": 7, "node_count": 2, "extra": 1})
    assert (body.wait, body.url, body.validation, body.stat_test, body.batch_size) == (False, None, None, None, 32)
    assert body.nonce_error() is None  # node_id >= node_count is legal here: only echoed
    assert GenerateRequest.model_validate({**ROUND, "nonces": [1, 1]}).nonce_error() == "nonces must not repeat"
    for bad in [[-1], [1.5], ["2"]]:
        with pytest.raises(ValidationError):
            GenerateRequest.model_validate({**ROUND, "nonces": bad})


def test_stat_test_fills_missing_fields_with_the_defaults():
    assert StatTest.model_validate({"p_mismatch": 0.1}).model_dump() == {
        "dist_threshold": 0.02, "p_mismatch": 0.1, "fraud_threshold": 0.01, "p_value_threshold": None}
