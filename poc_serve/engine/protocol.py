"""What the engine layer exchanges with its callers: a round's parameters and a batch's results.

Kept free of vLLM imports so that Serve deployments and tests can use these types (and swap in
another engine implementing :class:`PoCEngineProtocol`) without loading vLLM.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol

from pydantic import BaseModel, ConfigDict, Field

from poc_serve.poc import Randomization


class PoCComputeError(RuntimeError):
    """A PoC call failed on the engine. The message names the cause and is what HTTP callers see;
    ``reason`` holds it too, so it survives Ray's wrapping of remote exceptions."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PoCRound(BaseModel):
    """The parameters that define every nonce's computation in a round (spec section 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_hash: str = Field(min_length=1, description="Block hash the round is seeded with, used byte for byte.")
    public_key: str = Field(min_length=1, description="Public key of the node whose nonces are computed.")
    seq_len: int = Field(ge=1, description="Input sequence length S of every nonce.")
    randomization: Randomization = Field("sign_flips", description="Randomisation mode of spec section 2 step 3.")


class ArtifactRound(BaseModel):
    """The parameters that define every nonce's v2 artifact (poc-v2.md sections 1 and 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_hash: str = Field(min_length=1, description="Block hash the round is seeded with, used byte for byte.")
    public_key: str = Field(min_length=1, description="Public key of the node whose nonces are computed.")
    seq_len: int = Field(ge=1, description="Input sequence length S of every nonce.")
    k_dim: int = Field(12, ge=1, description="Values per artifact (k); at most the model's hidden size.")
    stronger_rng: bool = Field(False, description="Inputs from SHA-256 sub-seeds (poc_stronger_rng, section 2).")


class ArtifactBatchResult(BaseModel):
    """Artifacts of a batch of nonces, in the order they were asked for."""

    model_config = ConfigDict(extra="forbid")

    nonces: list[int] = Field(description="The nonces, as asked for.")
    artifacts: list[str | None] = Field(
        description="Each nonce's artifact as vector_b64 (k binary16 values, little-endian, standard base64); "
                    "None where the artifact stayed non-finite after one recomputation (section 3).")


class PoCBatchResult(BaseModel):
    """Distances of a batch of nonces, in the order they were asked for."""

    model_config = ConfigDict(extra="forbid")

    nonces: list[int] = Field(description="The nonces, as asked for.")
    distances: list[float] = Field(description="Distance of each nonce, in [0, 2].")
    hidden: list[list[float]] | None = Field(
        None, description="Final-norm hidden state at the last position per nonce (only when asked).")


class OpenAIServing(Protocol):
    """Answers an OpenAI route: one item ``{"status", "stream": False, "media_type", "body": JSON
    bytes}``, or a head ``{"status", "stream": True, "media_type"}`` and the SSE chunks
    (:meth:`poc_serve.engine.openai_server.OpenAIServer.handle`)."""

    def handle(self, route: str, body: dict | None = None) -> AsyncIterator[Any]:
        ...


class PoCEngineProtocol(Protocol):
    """What the Serve layer needs from an engine; tests may inject another implementation."""

    max_model_len: int

    async def compute(self, round: PoCRound, nonces: list[int], return_hidden: bool = False) -> PoCBatchResult:
        """Distances of ``nonces`` for ``round``."""
        ...

    async def compute_artifacts(self, round: ArtifactRound, nonces: list[int]) -> ArtifactBatchResult:
        """v2 artifacts of ``nonces`` for ``round``."""
        ...

    def model_info(self) -> dict:
        """``{"model", "model_path", "hidden_size", "max_model_len"}`` of the served model."""
        ...

    def openai_server(self) -> OpenAIServing:
        """The OpenAI routes over this engine (:class:`poc_serve.engine.openai_server.OpenAIServer`)."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...

    def shutdown(self) -> None:
        """Release the engine's processes and devices."""
        ...
