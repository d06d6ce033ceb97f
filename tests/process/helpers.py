"""Process-level test helpers: service command lines as child processes."""

from recstack.procs import ServiceProcess as Proc

__all__ = ["Proc"]
