"""The part of the engine protocol that every stand-in engine answers alike: what the fast test
layer and the CPU benchmarks inject through the engine deployment's ``engine_factory`` in place
of vLLM. A stand-in subclasses :class:`StandInEngine`, adds the calls it is used for (``compute``,
``compute_artifacts``, ``generate``) and is injected as ``engine_factory=TheClass.factory``.
"""

from __future__ import annotations

from typing import Any


class StandInEngine:
    """Starts at once, is always healthy, and describes a 64-token model named ``stand-in``."""

    max_model_len = 64

    @classmethod
    async def factory(cls, config: Any) -> "StandInEngine":
        """An ``engine_factory``: a new stand-in, whatever the engine config says."""
        return cls()

    def model_info(self) -> dict:
        return {"model": "stand-in", "model_path": "/nowhere/stand-in", "hidden_size": 32,
                "max_model_len": self.max_model_len}

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
