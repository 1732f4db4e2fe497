"""The llama.cpp engine: loading GGUF models and streaming generation on one dedicated thread.

Importing this package is cheap: llama_cpp is imported only when a model loads.
"""

from app.engine.options import LoadOptions, SamplerSettings
from app.engine.stats import GenerationStats, LoadReport

__all__ = ["GenerationStats", "LoadOptions", "LoadReport", "SamplerSettings"]
