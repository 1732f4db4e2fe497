"""One copy of each llama.cpp library in the process, whatever Cattery does before a load (issue 16).

The wheel ships `libggml.so`, `libggml.so.0` and `libggml.so.0.x` as separate files. libllama
loads `.so.0`; Cattery used to open `libggml.*` by file name to ask ggml for the GPUs' free
memory, which on a CUDA build maps a second libggml beside the first, and the next model load
died with a segmentation fault. The device query now goes through libllama's own handle. These
tests run that query on this CPU build (the same path: every device, the CPU included) in a
fresh process that does what `cattery chat --plain` does before it loads a model, and look at
the process's own memory map.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEADLINE, ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps (Linux only)")

PROBE = r"""
import json, re, sys
from pathlib import Path

import app.cli  # everything the chat imports, as `cattery chat` has them loaded before a load
from app.engine.engine import Engine
from app.engine.native import ggml_devices, gpu_devices
from app.hub.fit import machine_memory

model = Path(sys.argv[1])
devices = ggml_devices()
gpus = gpu_devices()
machine_memory()  # the fit check the Hub and the memory check run
engine = Engine()
engine.load(model)
ok = engine.loaded
engine.close()
files = sorted({line.split()[-1] for line in open("/proc/self/maps") if re.search(r"/lib(ggml|llama)[-\w]*\.so", line)})
print(json.dumps({"devices": devices, "gpus": gpus, "loaded": ok, "files": files}))
"""


def _family(path: str) -> str:
    """libggml-base.so.0.25.3 → libggml-base: one library, whichever of its file names."""
    return Path(path).name.split(".so")[0]


def test_the_device_query_and_a_load_map_one_copy_of_each_library(model_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_path)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["loaded"]
    # the query went through: ggml lists its devices (on this build, the CPU), from the loaded library
    assert any(kind == 0 for _name, kind, _free, _total in seen["devices"]), seen["devices"]
    families = _families(seen["files"])
    assert "libggml" in families and "libllama" in families, seen["files"]
    twice = {k: v for k, v in families.items() if len(v) > 1}
    assert not twice, f"a llama.cpp library is mapped from two files: {twice}"


def _families(files: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in files:
        out.setdefault(_family(path), []).append(Path(path).name)
    return out


def test_opening_libggml_by_a_file_name_would_map_a_second_copy() -> None:
    """The check above sees a second copy when there is one: opening the wheel's first `libggml.*`
    by its file name (what Cattery did) beside libllama's `libggml.so.0`."""
    probe = (
        "import ctypes, json, re\nfrom pathlib import Path\nimport llama_cpp as L\n"
        "lib = Path(L.__file__).parent / 'lib'\n"
        "names = sorted(p.name for p in lib.glob('libggml.*'))\n"
        "ctypes.CDLL(str(lib / names[0]))\n"
        "print(json.dumps(sorted({line.split()[-1] for line in open('/proc/self/maps') "
        "if re.search(r'/lib(ggml|llama)[-\\w]*\\.so', line)})))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    families = _families(json.loads(r.stdout.strip()))
    if names_are_links():
        pytest.skip("this wheel's libggml file names are links to one file: no second copy to make")
    assert len(families["libggml"]) == 2, families


def names_are_links() -> bool:
    import llama_cpp as L

    lib = Path(L.__file__).parent / "lib"
    return len({p.resolve() for p in lib.glob("libggml.so*")}) < 2
