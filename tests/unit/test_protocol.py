"""The HTTP API's models: what they accept, what they answer 422 for, and round identity."""

import pytest
from pydantic import BaseModel
from pydantic import ValidationError

from poc_serve.serve.pow_v1.protocol import (
    MAX_VALIDATION_BATCH,
    ControlResponse,
    PoCInitRequest,
    PoCStatus,
    ProofBatch,
    ValidatedBatch,
)

INIT = {"block_hash": "bh", "block_height": 7, "public_key": "pk", "r_target": 1.4}
BATCH = {"public_key": "pk", "block_hash": "bh", "block_height": 7, "nonces": [0, 5],
         "dist": [0.5, 1.2]}


def init(**changes):
    return PoCInitRequest.model_validate({**INIT, **changes})


def rejected(model, data, *words):
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    message = str(info.value)
    for word in words:
        assert word in message
    return message


def test_defaults():
    r = init()
    assert (r.fraud_threshold, r.node_id, r.node_count, r.batch_size, r.seq_len) == (
        0.01, -1, -1, 32, 256)
    assert (r.callback_url, r.randomization) == (None, "sign_flips")


@pytest.mark.parametrize("key", ["url", "callback_url"])
def test_callback_url_and_its_alias(key):
    assert init(**{key: "http://cb:9000/"}).callback_url == "http://cb:9000/"


@pytest.mark.parametrize("flags,mode", [
    ({"use_sign_flips": True}, "sign_flips"),
    ({"use_layer_hooks": True}, "layer_hooks"),
    ({"use_sign_flips": True, "use_layer_hooks": False}, "sign_flips"),
    ({"use_sign_flips": False, "use_layer_hooks": True}, "layer_hooks"),
    ({"use_layer_hooks": True, "randomization": "layer_hooks"}, "layer_hooks"),
    ({"use_sign_flips": True, "randomization": "sign_flips"}, "sign_flips"),
])
def test_legacy_booleans_resolve(flags, mode):
    assert init(**flags).randomization == mode


@pytest.mark.parametrize("flags", [
    {"use_sign_flips": True, "use_layer_hooks": True},
    {"use_sign_flips": False, "use_layer_hooks": False},
])
def test_legacy_booleans_contradicting_each_other(flags):
    rejected(PoCInitRequest, {**INIT, **flags},
             "use_sign_flips and use_layer_hooks contradict each other")


@pytest.mark.parametrize("flags,words", [
    ({"randomization": "layer_hooks", "use_sign_flips": True}, ["randomization", "use_sign_flips"]),
    ({"randomization": "sign_flips", "use_layer_hooks": True}, ["randomization", "use_layer_hooks"]),
    ({"use_sign_flips": False}, ["use_sign_flips"]),
    ({"use_layer_hooks": False}, ["use_layer_hooks"]),
])
def test_legacy_booleans_contradicting_randomization_or_naming_nothing(flags, words):
    rejected(PoCInitRequest, {**INIT, **flags}, *words)


@pytest.mark.parametrize("key", ["block_hash", "public_key"])
def test_empty_strings_rejected(key):
    rejected(PoCInitRequest, {**INIT, key: ""}, key)
    rejected(ProofBatch, {**BATCH, key: ""}, key)


@pytest.mark.parametrize("key", ["block_hash", "block_height", "public_key", "r_target"])
def test_required_fields(key):
    data = dict(INIT)
    del data[key]
    rejected(PoCInitRequest, data, key)


@pytest.mark.parametrize("value", [0, -0.1, 2.5, float("nan"), float("inf")])
def test_r_target_out_of_range(value):
    rejected(PoCInitRequest, {**INIT, "r_target": value}, "r_target")


def test_r_target_upper_bound_is_inclusive():
    assert init(r_target=2.0).r_target == 2.0


@pytest.mark.parametrize("changes,key", [
    ({"fraud_threshold": 0}, "fraud_threshold"),
    ({"fraud_threshold": 1.5}, "fraud_threshold"),
    ({"batch_size": 0}, "batch_size"),
    ({"seq_len": 0}, "seq_len"),
    ({"randomization": "none"}, "randomization"),
    ({"use_sign_flips": "maybe"}, "use_sign_flips"),
])
def test_bad_values_rejected(changes, key):
    rejected(PoCInitRequest, {**INIT, **changes}, key)


def test_extra_keys_rejected():
    rejected(PoCInitRequest, {**INIT, "r_taget": 1.0}, "r_taget")
    rejected(ProofBatch, {**BATCH, "signature": "x"}, "signature")
    # Both spellings at once is ambiguous: the second counts as an unknown key.
    rejected(PoCInitRequest, {**INIT, "url": "http://a", "callback_url": "http://b"}, "url")


def test_round_key_identity():
    base = init(url="http://cb", node_id=0, node_count=2)
    same = init(callback_url="http://cb", node_id=0, node_count=2, use_sign_flips=True)
    assert base.round_key() == same.round_key()
    for changes in [{"block_hash": "other"}, {"block_height": 8}, {"public_key": "pk2"},
                    {"r_target": 1.3}, {"fraud_threshold": 0.02}, {"node_id": 1},
                    {"node_count": 3}, {"seq_len": 128}, {"batch_size": 64},
                    {"url": "http://cb2"}, {"use_layer_hooks": True}]:
        other = init(**{"url": "http://cb", "node_id": 0, "node_count": 2, **changes})
        assert other.round_key() != base.round_key(), changes


@pytest.mark.parametrize("node_id,node_count,message", [
    (0, 1, None),
    (3, 4, None),
    (-1, -1, "node_id and node_count must be set for generation"),
    (0, -1, "node_id and node_count must be set for generation"),
    (-1, 2, "node_id and node_count must be set for generation"),
    (0, 0, "node_count must be >= 1"),
    (5, 2, "node_id must satisfy 0 <= node_id < node_count (got node_id=5, node_count=2)"),
    (2, 2, "node_id must satisfy 0 <= node_id < node_count"),
    (-3, 2, "node_id must satisfy 0 <= node_id < node_count"),
])
def test_node_assignment(node_id, node_count, message):
    r = init(node_id=node_id, node_count=node_count)
    error = r.node_assignment_error()
    assert r.has_node_assignment() == (message is None)
    if message is None:
        assert error is None
    else:
        assert message in error


def test_proof_batch_accepts_optional_fields_and_empty_lists():
    b = ProofBatch.model_validate({**BATCH, "node_id": 3, "r_target": 1.4})
    assert (b.nonces, b.dist, b.node_id, b.r_target) == ([0, 5], [0.5, 1.2], 3, 1.4)
    assert ProofBatch.model_validate({**BATCH, "nonces": [], "dist": []}).nonces == []


def test_proof_batch_length_mismatch():
    rejected(ProofBatch, {**BATCH, "dist": [0.5]},
             "nonces and dist must have the same length (got 2 nonces, 1 dist)")


@pytest.mark.parametrize("bad", [-1, 1.5, "3", 2.0, None, True])
def test_proof_batch_nonces_must_be_non_negative_integers(bad):
    rejected(ProofBatch, {**BATCH, "nonces": [0, bad]}, "nonces")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x"])
def test_proof_batch_dist_must_be_finite_numbers(bad):
    rejected(ProofBatch, {**BATCH, "dist": [0.5, bad]}, "dist")


def test_oversized_batch_rejected():
    n = MAX_VALIDATION_BATCH
    assert len(ProofBatch.model_validate(
        {**BATCH, "nonces": list(range(n)), "dist": [0.1] * n}).nonces) == n
    message = rejected(ProofBatch, {**BATCH, "nonces": list(range(n + 1)), "dist": [0.1] * (n + 1)})
    assert str(MAX_VALIDATION_BATCH) in message
    # A huge dist list alone is refused too, before anything else is checked.
    rejected(ProofBatch, {**BATCH, "dist": [0.1] * (n + 1)}, str(MAX_VALIDATION_BATCH))


def test_validated_batch_round_trip():
    data = {**BATCH, "received_dist": [0.5, 1.2], "dist": [0.5, 1.5], "r_target": 1.4,
            "fraud_threshold": 0.01, "n_invalid": 1, "probability_honest": 1e-3,
            "fraud_detected": True, "computed_distances": [0.5, 1.5]}
    v = ValidatedBatch.model_validate(data)
    assert v.model_dump(exclude_none=True) == data
    rejected(ValidatedBatch, {**data, "computed_distances": [0.5]}, "computed_distances")


def test_status_carries_state_under_both_names_and_keeps_validation_apart():
    status = PoCStatus(state="GENERATING", is_model_initialized=True, total_checked=10)
    dumped = ControlResponse(pow_status=status).model_dump()
    assert dumped["status"] == "OK"
    pow_status = dumped["pow_status"]
    assert pow_status["state"] == pow_status["status"] == "GENERATING"
    assert pow_status["validation"] == {"batches": 0, "nonces": 0, "fraud_detected": 0}
    assert pow_status["total_checked"] == 10
    with pytest.raises(ValidationError):
        PoCStatus(state="RUNNING", is_model_initialized=True)


@pytest.mark.parametrize("module,count", [
    ("poc_serve.serve.pow_v1.protocol", 7), ("poc_serve.serve.openai.protocol", 0), ("poc_serve.serve.config", 1),
    ("poc_serve.engine.config", 1), ("poc_serve.engine.protocol", 4), ("poc_serve.serve.pow_v2.protocol", 21)])
def test_every_field_is_described(module, count):
    import importlib

    mod = importlib.import_module(module)
    models = [m for m in vars(mod).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel and m.__module__ == module]
    assert len(models) == count
    for model in models:
        fields = {**model.model_fields, **model.model_computed_fields}
        for name, field in fields.items():
            assert field.description, f"{model.__name__}.{name}"
