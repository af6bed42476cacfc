"""Model checkpoints that poc_serve can build locally (no model hub needed)."""
