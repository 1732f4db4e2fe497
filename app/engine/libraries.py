"""Load llama.cpp's shared libraries before numpy and everything numpy brings into the process.

Issue 16: on a CUDA build, the processes that crashed inside `llama_model_load_from_file`
(`cattery chat --plain`, bench/window.py) had imported gguf-py, and with it numpy and its
OpenBLAS, libgfortran and yaml, *before* `llama_cpp` opened libllama, libggml-cuda and the CUDA
runtime. The processes that loaded the same model with the same options and worked (the
bundle's variants.py, bench/decode.py) had imported `llama_cpp` first. llama-cpp-python's
issue 1581 reports the same class on GPU builds ("import llama_cpp first and pandas second").
Why the order matters was not found without a GPU; this makes every process that loads a model
take the order that worked, and `bench/gpu_bisect.py` measures both orders on a GPU machine.

`import llama_cpp` opens libllama (and the backends it links) before its own `import numpy`,
so importing it first is enough.
"""

from __future__ import annotations

import contextlib
import sys


def load_llama_first() -> None:
    """Import `llama_cpp` now, before the caller imports gguf-py, numpy, yaml or psutil.

    A llama-cpp-python that cannot be imported is left for the code that needs it, which
    says so in one line; here it only means nothing can be ordered.
    """
    if "llama_cpp" in sys.modules:
        return
    # ImportError, OSError or RuntimeError from a broken build: reported by the code that needs it
    with contextlib.suppress(Exception):
        import llama_cpp  # noqa: F401  (opens libllama and its backends)
