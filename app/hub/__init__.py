"""Models: the bundled default, the local model library, and the Hugging Face hub."""
