"""Ray Serve side of poc_serve: HTTP protocol, round logic, callbacks, metrics, deployments."""
