"""PoC v1 (/api/v1/pow, docs/protocol.md): protocol (request and answer models), service (the
round), router (the routes)."""
