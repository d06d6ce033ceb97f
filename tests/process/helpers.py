"""Process-level test helpers: service command lines as child processes."""

from recstack.tools.procs import ServiceProcess as Proc

__all__ = ["Proc"]
