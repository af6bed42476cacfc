"""The OpenAI-compatible API (/v1): protocol, service, router."""
