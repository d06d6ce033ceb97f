"""recstack: shared runtime of the recall, rank and gateway services.

Nothing in this package imports torch or transformers: it is what serving images ship.
"""

__version__ = "0.1.0"
