"""Request and response models of the HTTP API under /api/v1/pow (spec section 4).

Requests forbid unknown keys so that a misspelt field answers 422 instead of being silently
ignored; responses ignore unknown keys. Every field carries a description for the OpenAPI page.
"""

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, model_validator

from poc_serve.poc import Randomization
from poc_serve.serve.http.bounds import Int64, Nonce, PositiveInt64

State = Literal["IDLE", "GENERATING", "VALIDATING", "STOPPED"]

# Bounds the work (and memory) one POST /validate can ask for.
MAX_VALIDATION_BATCH = 10_000

# Legacy booleans of the reference; not part of the round's identity once resolved.
_LEGACY_FIELDS = frozenset({"use_sign_flips", "use_layer_hooks"})

# Python's JSON parser accepts NaN; a NaN distance would compare as "valid" against any r_target.
Distance = Annotated[float, Field(allow_inf_nan=False)]


class PoCInitRequest(BaseModel):
    """Body of POST /init, /init/generate and /init/validate: the round's configuration."""

    model_config = ConfigDict(extra="forbid")

    block_hash: str = Field(min_length=1, description="Hash of the block that seeds the round.")
    block_height: Int64 = Field(description="Height of that block.")
    public_key: str = Field(min_length=1, description="Public key of the node doing the work.")
    r_target: float = Field(gt=0, le=2, description="A nonce is valid when its distance < r_target.")
    fraud_threshold: float = Field(
        0.01, gt=0, le=1, description="Validation flags fraud when probability_honest < this."
    )
    node_id: Int64 = Field(-1, description="This node's index among node_count nodes (-1: unset).")
    node_count: Int64 = Field(-1, description="Number of nodes sharing the nonce space (-1: unset).")
    batch_size: PositiveInt64 = Field(32, description="Batch size hint; the service may pick its own.")
    seq_len: PositiveInt64 = Field(256, description="Tokens per nonce; must fit the engine's length.")
    callback_url: str | None = Field(
        None,
        validation_alias=AliasChoices("callback_url", "url"),
        description="Base URL for /generated and /validated callbacks (input key `url` also works).",
    )
    randomization: Randomization = Field(
        "sign_flips", description="How each nonce randomises the forward pass."
    )
    use_sign_flips: bool | None = Field(
        None, description="Legacy: true selects sign_flips. Must agree with the other fields."
    )
    use_layer_hooks: bool | None = Field(
        None, description="Legacy: true selects layer_hooks. Must agree with the other fields."
    )

    @model_validator(mode="after")
    def _resolve_legacy_booleans(self) -> "PoCInitRequest":
        """Map the reference's two booleans onto `randomization`, rejecting contradictions."""
        flags = {"sign_flips": self.use_sign_flips, "layer_hooks": self.use_layer_hooks}
        given = {mode: flag for mode, flag in flags.items() if flag is not None}
        if not given:
            return self
        chosen = [mode for mode, flag in given.items() if flag]
        if len(chosen) != 1:
            if len(given) == 2:
                raise ValueError("use_sign_flips and use_layer_hooks contradict each other")
            # A lone false names no mode: the reference then ran without either randomisation.
            name = f"use_{next(iter(given))}"
            raise ValueError(f"{name}=false names no randomization mode; set randomization instead")
        mode = chosen[0]
        if "randomization" in self.model_fields_set and self.randomization != mode:
            raise ValueError(
                f"randomization={self.randomization!r} contradicts use_{mode}=true"
            )
        self.randomization = mode
        return self

    def round_key(self) -> tuple[Any, ...]:
        """The round's configuration as a tuple; equal tuples mean an identical config."""
        return tuple(self.model_dump(exclude=set(_LEGACY_FIELDS)).values())

    def node_assignment_error(self) -> str | None:
        """Why node_id/node_count cannot drive generation, or None when they can."""
        got = f"(got node_id={self.node_id}, node_count={self.node_count})"
        if self.node_id == -1 or self.node_count == -1:
            return f"node_id and node_count must be set for generation {got}"
        if self.node_count < 1:
            return f"node_count must be >= 1 {got}"
        if not 0 <= self.node_id < self.node_count:
            return f"node_id must satisfy 0 <= node_id < node_count {got}"
        return None

    def has_node_assignment(self) -> bool:
        """True when node_id and node_count name a valid share of the nonce space."""
        return self.node_assignment_error() is None


class ProofBatch(BaseModel):
    """Nonces and their distances as a node reports them (body of POST /validate)."""

    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(min_length=1, description="Public key the nonces were computed for.")
    block_hash: str = Field(min_length=1, description="Block hash the nonces were computed for.")
    block_height: Int64 = Field(description="Height of that block.")
    nonces: list[Nonce] = Field(description="Nonces (non-negative integers), paired with dist.")
    dist: list[Distance] = Field(description="Distance of each nonce, same order as nonces.")
    node_id: Int64 | None = Field(None, description="Reporting node's index (informational).")
    r_target: float | None = Field(
        None, description="Threshold the nonces were found under (carried by /generated)."
    )

    @model_validator(mode="before")
    @classmethod
    def _limit_size(cls, data: Any) -> Any:
        # Checked before item validation so an oversized body costs no per-item work.
        if isinstance(data, dict):
            for key in ("nonces", "dist"):
                items = data.get(key)
                if isinstance(items, list) and len(items) > MAX_VALIDATION_BATCH:
                    raise ValueError(
                        f"at most MAX_VALIDATION_BATCH={MAX_VALIDATION_BATCH} {key} per batch "
                        f"(got {len(items)})"
                    )
        return data

    @model_validator(mode="after")
    def _same_length(self) -> "ProofBatch":
        if len(self.nonces) != len(self.dist):
            raise ValueError(
                "nonces and dist must have the same length "
                f"(got {len(self.nonces)} nonces, {len(self.dist)} dist)"
            )
        return self


class ValidatedBatch(ProofBatch):
    """Answer of POST /validate and body of the /validated callback."""

    received_dist: list[float] = Field(description="The distances the batch reported.")
    dist: list[float] = Field(description="The distances recomputed by this node.")
    r_target: float = Field(description="The round's r_target used for the judgement.")
    fraud_threshold: float = Field(description="The round's fraud_threshold.")
    n_invalid: int = Field(ge=0, description="Nonces with a reported or recomputed dist >= r_target.")
    probability_honest: float = Field(
        ge=0, le=1, description="P(X >= n_invalid), X ~ Binomial(len(nonces), 5e-4)."
    )
    fraud_detected: bool = Field(description="probability_honest < fraud_threshold.")
    computed_distances: list[float] = Field(description="Same values as dist (seed's name).")

    @model_validator(mode="after")
    def _all_lists_match(self) -> "ValidatedBatch":
        n = len(self.nonces)
        for key in ("received_dist", "computed_distances"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"{key} must have one entry per nonce (got {n} nonces)")
        return self


class ValidationStats(BaseModel):
    """Validation counters of the round, kept apart from generation counters."""

    batches: int = Field(0, ge=0, description="ProofBatches validated.")
    nonces: int = Field(0, ge=0, description="Nonces recomputed.")
    fraud_detected: int = Field(0, ge=0, description="Batches judged fraudulent.")


class CallbackStats(BaseModel):
    """The round's callback sender: what waits for the receiver, what failed, what was given up."""

    pending_callbacks: int = Field(0, description="Callbacks not yet delivered (the one being sent included).")
    pending_items: int = Field(0, description="Valid nonces in the pending /generated callbacks.")
    delivered_callbacks: int = Field(0, description="Callbacks the receiver answered 2xx.")
    failed_attempts: int = Field(0, description="POSTs that failed (each is retried with backoff).")
    dropped_callbacks: int = Field(0, description="Callbacks given up (over max_pending_callback_nonces).")
    dropped_items: int = Field(0, description="Valid nonces in dropped callbacks.")
    last_error: str | None = Field(None, description="The last failed POST's URL and error; null once one succeeds.")


class PoCStatus(BaseModel):
    """State and results of the round (GET /status and the control endpoints' pow_status)."""

    state: State = Field(description="State of the node.")
    is_model_initialized: bool = Field(description="Whether the engine is ready.")
    engine_error: str | None = Field(
        None, description="Why no engine replica is ready (its deployment's state and message); null when one is.")
    valid_nonces: list[int] = Field(default_factory=list, description="Valid nonces found.")
    valid_distances: list[float] = Field(
        default_factory=list, description="Distances of valid_nonces, same order."
    )
    total_checked: int = Field(0, ge=0, description="Nonces computed by generation.")
    total_valid: int = Field(0, ge=0, description="Valid nonces found by generation.")
    elapsed_seconds: float = Field(0.0, ge=0, description="Seconds spent generating.")
    rate_per_second: float = Field(0.0, ge=0, description="Nonces checked per generating second.")
    r_target: float | None = Field(None, description="The round's r_target.")
    block_hash: str | None = Field(None, description="The round's block hash.")
    block_height: int | None = Field(None, description="The round's block height.")
    public_key: str | None = Field(None, description="The round's public key.")
    node_id: int | None = Field(None, description="The round's node_id.")
    node_count: int | None = Field(None, description="The round's node_count.")
    seq_len: int | None = Field(None, description="The round's seq_len.")
    randomization: Randomization | None = Field(None, description="The round's randomization.")
    validation: ValidationStats = Field(
        default_factory=ValidationStats, description="Validation statistics of the round."
    )
    callbacks: CallbackStats = Field(
        default_factory=CallbackStats, description="Delivery of the callbacks to the round's receiver.")

    @computed_field(description="Same as state, for callers that read this key.")
    @property
    def status(self) -> State:
        """The state under the name some callers read."""
        return self.state


class ControlResponse(BaseModel):
    """Answer of the control endpoints."""

    status: Literal["OK"] = Field("OK", description="Always OK on success.")
    pow_status: PoCStatus = Field(description="The node's status after the call.")
