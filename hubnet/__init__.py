"""The face of hubnet: CLI, configuration and the client."""
