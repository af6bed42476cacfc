"""vLLM side of poc_serve: worker extension, forward pass, engine wrapper and its config."""
