"""The serving node: services, job runner, job protocol, listener."""
