"""Models: the bundled default, the local model library, and (later) the Hugging Face hub."""
