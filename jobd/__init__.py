"""jobd: a single-process asyncio job daemon."""

__version__ = "0.1.0"
