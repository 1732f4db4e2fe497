"""Merging, HF → GGUF conversion and quantization (see DESIGN.md)."""
