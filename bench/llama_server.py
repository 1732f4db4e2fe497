"""llama.cpp's own server (`llama-server`), built from the llama.cpp that the installed llama-cpp-python
vendors, so the remote engine's bench (bench/remote.py --llama-server) runs against the real thing.

llama-server is not on the package index; its source is: the source release of llama-cpp-python (an
sdist, from the package registry) carries `vendor/llama.cpp`. It is built once into bench/out/ with
CMake and Ninja (CPU only, no web UI, no curl), about 10 minutes on two cores, and reused after.

    python bench/llama_server.py        # builds if needed, prints the binary's path
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT_DIR

CACHE = OUT_DIR / "llama-server"


def source(cache: Path = CACHE) -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's source release, extracted once."""
    release = version("llama-cpp-python")
    root = cache / f"llama_cpp_python-{release}" / "vendor" / "llama.cpp"
    if (root / "tools" / "server" / "server.cpp").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{release}.tar.gz"
    if not sdist.is_file():
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache)]
        subprocess.run([*pip, f"llama-cpp-python=={release}"], check=True)
    prefix = f"llama_cpp_python-{release}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        wanted = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(cache, members=wanted, filter="data")
    return root


def build(cache: Path = CACHE) -> Path:
    """The llama-server binary, built if it is not there yet."""
    binary = cache / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    for tool in ("cmake", "ninja", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"building llama-server needs {tool} on PATH")
    root = source(cache)
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_UI=OFF",  # the web UI needs npm or a download; the API needs neither
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
    ]
    subprocess.run(["cmake", "-S", str(root), "-B", str(cache / "build"), "-G", "Ninja", *flags], check=True)
    subprocess.run(["ninja", "-C", str(cache / "build"), "llama-server"], check=True)
    return binary


if __name__ == "__main__":
    print(build())
