"""Porch: distributed, decentralized Python data pipelines.

What a user's script may import: ``SKIP`` (send nothing this iteration), ``stop()`` (end the
stream after this iteration's output), and ``Stop`` (raise to end the stream at once, sending
nothing from this iteration).
"""

from porch.stream import SKIP, Stop, stop

__version__ = "0.1.0"

__all__ = ["SKIP", "Stop", "__version__", "stop"]
