"""Cattery's data files: settings defaults, sampler presets, templates (installed as `cattery_assets`)."""
