"""llama.cpp's libraries in a Cattery process: one copy of each, loaded before numpy's (issue 16).

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


# -- llama.cpp's libraries load first ----------------------------------------------------------
# The processes that crashed on the CUDA build (issue 16) had loaded numpy, its OpenBLAS and
# yaml (through gguf-py) before libllama; those that worked had loaded libllama first. Every
# Cattery process that loads a model now does. The order is read from the dynamic linker's own
# list (dl_iterate_phdr walks it in load order) after the real command ran in a fresh process.

LINK_ORDER = r"""
import ctypes, json, runpy, sys

class Info(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p)]

CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Info), ctypes.c_size_t, ctypes.c_void_p)
sys.argv = ["cattery", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("app", run_name="__main__")
except SystemExit as exc:
    code = exc.code
names = []
def collect(info, _size, _data):
    names.append((info.contents.name or b"").decode(errors="replace"))
    return 0
ctypes.CDLL(None).dl_iterate_phdr(CALLBACK(collect), None)
print(json.dumps({"code": code, "libraries": names}), file=sys.__stderr__)
"""


def _libraries_in_load_order(*argv: str, home: Path, stdin: str = "") -> list[str]:
    r = subprocess.run(
        [sys.executable, "-c", LINK_ORDER, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        env={**__import__("os").environ, "CATTERY_HOME": str(home)},
    )
    seen = json.loads(r.stderr.strip().splitlines()[-1])
    assert seen["code"] in (0, None), r.stderr[-2000:]
    return seen["libraries"]


def _loaded_before_llama(libraries: list[str]) -> list[str]:
    """Native libraries of installed packages (not Python's own lib-dynload) loaded before libllama."""
    first = next(i for i, name in enumerate(libraries) if "/llama_cpp/lib/" in name)
    return [Path(n).name for n in libraries[:first] if "-packages/" in n]


@pytest.mark.parametrize(
    "argv, stdin",
    [
        (("chat", "--plain", "--card", "none", "--max-tokens", "4"), "Hello!\n/quit\n"),
        (("prompt", "--card", "none"), ""),
    ],
    ids=["chat --plain", "prompt (vocabulary only)"],
)
def test_a_command_that_loads_a_model_loads_llama_cpp_before_numpy_and_yaml(
    argv: tuple[str, ...], stdin: str, tmp_path: Path
) -> None:
    libraries = _libraries_in_load_order(*argv, home=tmp_path / "home", stdin=stdin)
    names = [Path(n).name for n in libraries]
    assert any(n.startswith("_multiarray_umath") for n in names), "numpy was loaded too (gguf-py reads the model)"
    assert any(n.startswith("_yaml") for n in names), names
    assert _loaded_before_llama(libraries) == []


def test_every_command_that_loads_a_model_asks_for_llama_cpp_first() -> None:
    from app.cli import build_parser

    parser = build_parser()
    loads = {
        "chat (the app)": ["chat"],
        "chat --plain": ["chat", "--plain"],
        "prompt": ["prompt"],
        "eval": ["eval", "m.gguf", "t.txt"],
        "formats lint": ["formats", "lint", "chatml"],
    }
    for label, argv in loads.items():
        assert getattr(parser.parse_args(argv), "loads_llama", False), label
    for argv in (["cards", "list"], ["paths"], ["chats", "list"]):
        assert not getattr(parser.parse_args(argv), "loads_llama", False), argv


def test_an_engine_loads_llama_cpp_before_reading_the_model_with_gguf_py(model_path: Path) -> None:
    probe = (
        "import sys\nfrom app.engine.engine import Engine\n"
        "assert 'numpy' not in sys.modules and 'llama_cpp' not in sys.modules\n"
        "e = Engine(); e.load(__import__('pathlib').Path(sys.argv[1])); e.close()\n"
        "mods = list(sys.modules)  # in the order their imports finished\n"
        "print(mods.index('llama_cpp.llama_cpp') < mods.index('numpy') < mods.index('gguf'))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(model_path)], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "True"
