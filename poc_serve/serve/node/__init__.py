"""The ML-node management contract (docs/ml-node.md): protocol, service, router, the model cache,
GPU facts."""
