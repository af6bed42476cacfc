"""HTTP plumbing of the ingress: middleware for the network client's habits, request limits, error
handlers, integer bounds of request models."""
