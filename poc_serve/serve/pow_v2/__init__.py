"""PoC v2 (/api/v1/inference/pow, docs/v2.md): protocol, service, the generation loop, the job queue,
router."""
