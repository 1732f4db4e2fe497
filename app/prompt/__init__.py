"""Turning a conversation into the exact text a model was trained on."""
