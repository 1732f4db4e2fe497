"""Cattery: a terminal chat app for quantized LLMs running on llama.cpp."""

__version__ = "0.1.0"
