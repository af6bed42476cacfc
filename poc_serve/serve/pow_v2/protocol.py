"""Request and answer models of the PoC v2 API under /api/v1/inference/pow (poc-v2.md section 4).

Unlike v1's, the v2 bodies ignore unknown keys, as the spec says ("other keys ignored"): the
network's node software adds keys over time. Only ``params`` forbids them (422), because a
misspelt parameter would silently compute other artifacts. Checks that the spec answers with 400
rather than 422 (node and group ids, nonce lists) are methods that return the message, so the
service decides the status code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from poc_serve.poc.artifacts import DEFAULT_DIST_THRESHOLD, DEFAULT_FRAUD_THRESHOLD, DEFAULT_K_DIM, DEFAULT_P_MISMATCH
from poc_serve.serve.http.bounds import Int64, Nonce, PositiveInt64

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ArtifactParams(BaseModel):
    """``params``: what the artifacts are computed with; must match the deployed model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model's id, local path or served name.")
    seq_len: PositiveInt64 = Field(description="Input sequence length S of every nonce.")
    # Only int64-bounded: out of [1, hidden size] is the spec's 409 "params mismatch", not a 422.
    k_dim: Int64 = Field(DEFAULT_K_DIM, description="Values per artifact (k); the network omits it (12).")


class _Round(_Lenient):
    block_hash: str = Field(min_length=1, description="Block hash that seeds the inputs, used byte for byte.")
    block_height: Int64 = Field(description="Height of that block (echoed, never part of a seed).")
    public_key: str = Field(min_length=1, description="Public key of the participant whose nonces are computed.")
    node_id: Int64 = Field(description="The participant's node number.")
    node_count: Int64 = Field(description="The participant's node count (highest node number + 1).")
    batch_size: PositiveInt64 = Field(32, description="Nonces per engine call (a hint).")
    params: ArtifactParams = Field(description="Model, seq_len and k_dim of the artifacts.")
    url: str | None = Field(None, description="Callback base URL, used byte for byte; null: no callbacks.")
    poc_stronger_rng: bool = Field(False, description="Inputs from SHA-256 sub-seeds (spec section 2).")


class GenerationInit(_Round):
    """Body of POST init/generate: start the generation loop."""

    group_id: Int64 = Field(0, description="This backend's group among n_groups (the ML node sets it).")
    n_groups: Int64 = Field(1, description="Groups sharing the node's nonces (the ML node's backends).")

    def round_key(self) -> tuple:
        """Every field but batch_size: an equal key makes a repeated init/generate a no-op."""
        return tuple(self.model_dump(exclude={"batch_size"}).values())

    def assignment_error(self) -> str | None:
        """Why node and group ids cannot drive generation (answered 400), or None."""
        got = (f"(got node_id={self.node_id}, node_count={self.node_count}, "
               f"group_id={self.group_id}, n_groups={self.n_groups})")
        if not 0 <= self.node_id < self.node_count:
            return f"need 0 <= node_id < node_count {got}"
        if not 0 <= self.group_id < self.n_groups:
            return f"need 0 <= group_id < n_groups {got}"
        return None


class Artifact(_Lenient):
    """One nonce's artifact on the wire."""

    # Int64, not Nonce: a negative or unknown nonce here is the spec's 400 "must match nonces field".
    nonce: Int64 = Field(description="The nonce.")
    vector_b64: str = Field(description="k binary16 values, little-endian, standard base64.")


class ReceivedArtifacts(_Lenient):
    """``validation``: the artifacts a participant reported, to be recomputed and judged."""

    artifacts: list[Artifact] = Field(description="One per requested nonce.")


class StatTest(_Lenient):
    """``stat_test``: the thresholds of the verdict (missing fields take the defaults)."""

    dist_threshold: float = Field(DEFAULT_DIST_THRESHOLD, ge=0, description="L2 above which a nonce mismatches.")
    p_mismatch: float = Field(DEFAULT_P_MISMATCH, ge=0, le=1, description="Honest mismatch rate of the test.")
    fraud_threshold: float = Field(DEFAULT_FRAUD_THRESHOLD, ge=0, le=1,
                                   description="Fraud when the p-value is below this.")
    p_value_threshold: float | None = Field(
        None, ge=0, le=1, description="The network's name for a p-value threshold; ignored like upstream unless "
                                      "the app's v2_p_value_threshold_as_fraud_threshold is set.")


class GenerateRequest(_Round):
    """Body of POST generate: compute (and with ``validation`` judge) the given nonces."""

    nonces: list[Nonce] = Field(description="Nonces to compute, in answer order.")
    wait: bool = Field(False, description="true: answer the result; false: queue a job and answer its id.")
    validation: ReceivedArtifacts | None = Field(None, description="Artifacts to judge; null: just compute.")
    stat_test: StatTest | None = Field(None, description="Thresholds of the verdict; null: the defaults.")

    def nonce_error(self) -> str | None:
        """Why the nonce lists cannot be served (answered 400), or None."""
        if len(set(self.nonces)) != len(self.nonces):
            return "nonces must not repeat"
        if self.validation is not None:
            received = [a.nonce for a in self.validation.artifacts]
            if len(set(received)) != len(received):
                return "validation.artifacts nonces must not repeat"
            if set(received) != set(self.nonces):
                return "validation.artifacts nonces must match nonces field"
        return None


class Encoding(BaseModel):
    """How vector_b64 is encoded."""

    dtype: Literal["f16"] = Field("f16", description="IEEE binary16.")
    k_dim: int = Field(description="Values per artifact.")
    endian: Literal["le"] = Field("le", description="Little-endian.")


class BackendResult(BaseModel):
    """One backend's part of a control answer."""

    port: int = Field(description="0: engine replicas have no port of their own (docs/v2.md).")
    status: str = Field(description="OK, or stopped.")


class PowStatus(BaseModel):
    """The backend-surface state after a control call."""

    status: Literal["GENERATING", "STOPPED"] = Field(description="GENERATING after init/generate, STOPPED after stop.")


class StopAnswer(BaseModel):
    """Answer of stop."""

    status: Literal["OK"] = Field("OK", description="Always OK on success.")
    results: list[BackendResult] = Field(description="One per engine replica.")
    errors: None = Field(None, description="Always null on success (failures answer 4xx/5xx).")
    pow_status: PowStatus = Field(description="The state after the call.")


class InitGenerateAnswer(StopAnswer):
    """Answer of init/generate."""

    backends: int = Field(description="Engine replicas sharing the nonce counter.")
    n_groups: int = Field(description="The request's n_groups.")


class QueuedAnswer(BaseModel):
    """Answer of generate with wait false."""

    status: Literal["queued"] = Field("queued", description="The job waits in the FIFO queue.")
    request_id: str = Field(description="A UUID; GET generate/{request_id} answers the job's state.")
    queued_count: int = Field(description="Nonces of this job.")


class GeneratedResult(BaseModel):
    """A completed job without validation."""

    status: Literal["completed"] = Field("completed", description="Always completed.")
    request_id: str = Field(description="The job's id.")
    artifacts: list[Artifact] = Field(description="In request order; a nonce that stayed non-finite is left out.")
    encoding: Encoding = Field(description="How vector_b64 is encoded.")


class ValidatedResult(BaseModel):
    """A completed job with validation (spec section 5)."""

    status: Literal["completed"] = Field("completed", description="Always completed.")
    request_id: str = Field(description="The job's id.")
    n_total: int = Field(description="len(nonces).")
    n_mismatch: int = Field(description="Nonces whose received artifact mismatches ours.")
    mismatch_nonces: list[int] = Field(description="Those nonces, in request order.")
    p_value: float = Field(description="P(X >= n_mismatch), X ~ Binomial(n_total, p_mismatch).")
    fraud_detected: bool = Field(description="p_value < fraud_threshold.")
    fraud_threshold: float = Field(description="The threshold used.")
    skipped_nonces: list[int] = Field(description="Nonces whose recomputation stayed non-finite: not compared.")


class JobState(BaseModel):
    """GET generate/{request_id} of a job that has not completed."""

    status: Literal["queued", "running", "failed"] = Field(description="Where the job stands.")
    request_id: str = Field(description="The job's id.")
    error: str | None = Field(None, description="Why it failed (failed only).")


# What generate answers: a queued job, or (wait true) its result; and what a job's state route answers.
GenerateAnswer = QueuedAnswer | GeneratedResult | ValidatedResult
JobAnswer = GeneratedResult | ValidatedResult | JobState


class GenerationConfig(BaseModel):
    """The running generation's parameters, as status shows them."""

    block_hash: str = Field(description="Block hash.")
    block_height: int = Field(description="Block height.")
    public_key: str = Field(description="Public key.")
    node_id: int = Field(description="Node number.")
    node_count: int = Field(description="Node count.")
    group_id: int = Field(description="Group of this backend.")
    n_groups: int = Field(description="Number of groups.")
    seq_len: int = Field(description="Sequence length.")
    k_dim: int = Field(description="Values per artifact.")


class GenerationStats(BaseModel):
    """Progress of the generation (node-wide: one counter over all engine replicas)."""

    total_processed: int = Field(description="Artifacts generated.")
    nonces_per_second: float = Field(description="Artifacts per generating second.")


class BackendStatus(BaseModel):
    """One engine replica in GET status."""

    port: int = Field(description="0 (docs/v2.md).")
    status: Literal["IDLE", "GENERATING"] = Field(description="The node's generation state.")
    config: GenerationConfig | None = Field(description="The generation's parameters; null when none ran.")
    stats: GenerationStats | None = Field(description="The generation's progress; null when none ran.")


class NodeStatus(BaseModel):
    """Answer of GET status: the spec's fields, then ours (counters)."""

    status: Literal["IDLE", "GENERATING"] = Field(description="GENERATING while the generation loop runs.")
    backends: list[BackendStatus] = Field(description="One per engine replica.")
    nonfinite_nonces: int = Field(description="Nonces left out of generation: non-finite after one retry.")
    queued_nonces: int = Field(description="Nonces of queued jobs.")
    jobs: dict[str, int] = Field(description="Jobs by status (queued, running, completed, failed) held now.")
    callbacks: dict[str, int] = Field(description="Callbacks sent, pending, dropped, and artifacts dropped.")
