"""fastrelay: a WebSocket relay that carries browser traffic for chosen hosts
through a remote agent."""

from fastrelay import hotpath

hotpath.install()  # FASTRELAY_PURE_PYTHON=1: the hot path's .py source, not its build

__version__ = "0.1.0"
