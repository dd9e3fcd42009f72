"""epm-edge: on-premise product matching with small distilled LLMs on CPU."""

__version__ = "0.1.0"
