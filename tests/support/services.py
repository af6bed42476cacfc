"""The v1 round manager's and the v2 artifact service's requests, and the v2 service wired as the
ingress wires it, for the unit layer (no Ray): callbacks go to a real receiver, fast."""

from __future__ import annotations

import dataclasses

from poc_serve.serve.core.callbacks import CallbackSender
from poc_serve.serve.core.loop import GenerationSettings
from poc_serve.serve.core.policies import EnginePolicies
from poc_serve.serve.pow_v1.protocol import PoCInitRequest
from poc_serve.serve.pow_v2.protocol import GenerateRequest, GenerationInit
from poc_serve.serve.pow_v2.service import ArtifactService, ArtifactSettings
from tests.support.flaky_engines import FlakyArtifactEngine

PARAMS = {"model": "org/model", "seq_len": 16}
# The DAPI's callback base: the model id escaped twice, to be used byte for byte.
URL_PATH = "/v2/poc-batches/org%252Fmodel"
ROUND = {"block_hash": "bh", "block_height": 9, "public_key": "pk", "node_id": 1, "node_count": 3,
         "params": PARAMS}
FAST = {"backoff_base": 0.02, "backoff_cap": 0.05}


def service(engine: FlakyArtifactEngine, **kw) -> ArtifactService:
    return wired(engine, lambda: "IDLE", **kw)[0]


def wired(engine: FlakyArtifactEngine, v1_state, call_timeout_s: float = 60.0,
          **kw) -> tuple[ArtifactService, EnginePolicies]:
    """The service with the policies between it and a v1 round whose state ``v1_state()`` gives;
    ``kw`` holds ArtifactSettings' fields and the service's other arguments."""
    holder: dict = {}
    policies = EnginePolicies(v1_state, lambda: holder["svc"].generation.running)
    settings = {f.name: kw.pop(f.name) for f in dataclasses.fields(ArtifactSettings) if f.name in kw}
    svc = ArtifactService(
        compute=engine.compute, model_info=engine.model_info,
        stream=CallbackSender(**FAST, max_attempts=10, retry_client_errors=False),
        jobs=CallbackSender(**FAST, max_attempts=10, retry_client_errors=False),
        generation_conflict=policies.v2_generation_conflict, jobs_may_run=policies.jobs_may_run,
        generation=GenerationSettings(call_size=lambda seq_len: 8, batches_in_flight=4, callback_interval_s=0.05,
                                      log_interval_s=0.05, call_timeout_s=call_timeout_s),
        settings=ArtifactSettings(**{"replicas": 2, "served_model_name": "served-name", **settings}), **kw)
    holder["svc"] = svc
    return svc, policies


def init(**kw) -> GenerationInit:
    return GenerationInit.model_validate({**ROUND, **kw})


def gen_request(nonces, **kw) -> GenerateRequest:
    return GenerateRequest.model_validate({**ROUND, "nonces": list(nonces), **kw})


def v1_request(**kw) -> PoCInitRequest:
    return PoCInitRequest(**{"block_hash": "b", "block_height": 1, "public_key": "k", "r_target": 1.41,
                             "node_id": 1, "node_count": 2, "seq_len": 16, **kw})
