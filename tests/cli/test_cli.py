"""The command line: help without llama.cpp, paths, the model library."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_cattery


def test_help_does_not_import_llama_cpp() -> None:
    code = (
        "import sys\n"
        "from app.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['chat', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('llama_cpp', 'numpy', 'gguf', 'huggingface_hub') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "HEAVY []" in out.stdout
    assert "--gpu-layers" in out.stdout and "--rope-scale" in out.stdout


def test_console_script_and_module_agree() -> None:
    script = Path(sys.executable).parent / "cattery"
    a = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    b = run_cattery("--version")
    assert a.stdout == b.stdout and a.stdout.startswith("cattery ")


def test_paths(cattery_home: Path) -> None:
    r = run_cattery("paths", "--json", home=cattery_home)
    assert r.returncode == 0
    paths = json.loads(r.stdout)
    assert paths["settings"] == str(cattery_home / "config" / "settings.toml")
    assert paths["models"] == str(cattery_home / "data" / "models")
    assert paths["cache"].startswith(str(cattery_home))
    text = run_cattery("paths", home=cattery_home).stdout
    assert "settings" in text and str(cattery_home) in text


def test_models_list_and_info(cattery_home: Path, model_path: Path, tmp_path: Path) -> None:
    extra = cattery_home / "data" / "models"
    extra.mkdir(parents=True)
    shutil.copyfile(model_path, extra / "my-copy.gguf")
    listing = json.loads(run_cattery("models", "list", "--json", home=cattery_home).stdout)
    names = {e["name"]: e["source"] for e in listing}
    assert names["SmolLM2-135M-Instruct.Q4_1"] == "bundled"
    assert "my-copy" in names
    info = json.loads(run_cattery("models", "info", "my-copy", "--json", home=cattery_home).stdout)
    assert info["architecture"] == "llama"
    assert info["context_length"] == 8192
    assert info["file_type"] == "Q4_1"
    assert info["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in info["chat_template"]
    text = run_cattery("models", "info", str(model_path), home=cattery_home).stdout
    assert "trained context   8192" in text


def test_chat_by_library_name_remembers_last_model(cattery_home: Path, model_path: Path) -> None:
    extra = cattery_home / "data" / "models"
    extra.mkdir(parents=True)
    shutil.copyfile(model_path, extra / "kitten.gguf")
    r = run_cattery("chat", "--plain", "--model", "KITTEN", input="/quit\n", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert "kitten.gguf" in r.stderr
    again = run_cattery("--plain", input="/quit\n", home=cattery_home)  # no model: the last one used
    assert "kitten.gguf" in again.stderr


def test_chats_commands(cattery_home: Path, tmp_path: Path) -> None:
    from app.chats.store import ChatStore

    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    chat = store.create_chat("Tea time", "bundled:mochi", "Mochi", "Anne")
    store.add_message(chat, "assistant", "Hello, Anne.")
    store.add_message(chat, "user", "Hi!")
    store.close()
    listing = json.loads(run_cattery("chats", "list", "--json", home=cattery_home).stdout)
    assert [(c["title"], c["messages"], c["card"]) for c in listing] == [("Tea time", 2, "bundled:mochi")]
    out = tmp_path / "tea.jsonl"
    assert run_cattery("chats", "export", str(chat), "-o", str(out), home=cattery_home).returncode == 0
    assert json.loads(out.read_text().splitlines()[0])["character_name"] == "Mochi"
    md = tmp_path / "tea.md"
    assert run_cattery("chats", "export", str(chat), "-o", str(md), home=cattery_home).returncode == 0
    assert "**Anne:**" in md.read_text()
    r = run_cattery("chats", "import", str(out), home=cattery_home)
    assert r.returncode == 0 and "as chat" in r.stdout
    listing = json.loads(run_cattery("chats", "list", "--card", "mochi", "--json", home=cattery_home).stdout)
    assert len(listing) == 2 and all(c["card"] == "bundled:mochi" for c in listing)  # linked by the name
    bad = run_cattery("chats", "export", "99", "-o", str(out), home=cattery_home)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "no chat" in bad.stderr
    assert run_cattery("chats", "rm", str(chat), home=cattery_home).returncode == 0
    assert len(json.loads(run_cattery("chats", "list", "--json", home=cattery_home).stdout)) == 1
