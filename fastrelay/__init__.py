"""fastrelay: a WebSocket relay that carries browser traffic for chosen hosts
through a remote agent."""

__version__ = "0.1.0"
