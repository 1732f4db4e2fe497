"""Settings: defaults from assets, the user's overrides, atomic saves."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.options import LoadOptions, load_preset, preset_names
from app.errors import SettingsError
from app.settings import Settings


def test_defaults_and_user_overrides(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[model]\nctx = 8192\n[chat]\nsystem = "Meow."\n[custom]\nkeep = 1\n')
    s = Settings.load(path)
    assert s.get("model", "ctx") == 8192
    assert s.get("model", "gpu_layers") == "auto"  # from the defaults
    assert s.get("chat", "system") == "Meow."
    opts = LoadOptions.from_settings(s.model)
    assert opts.gpu_layers is None and opts.batch == 512 and opts.mmap


def test_save_writes_only_the_users_keys_atomically(tmp_path: Path) -> None:
    path = tmp_path / "config" / "settings.toml"
    s = Settings.load(path)
    s.set("model", "last_used", "/models/cat.gguf")
    s.save()
    text = path.read_text()
    assert 'last_used = "/models/cat.gguf"' in text
    assert "gpu_layers" not in text
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert Settings.load(path).get("model", "last_used") == "/models/cat.gguf"


def test_bad_toml_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("model = [\n")
    with pytest.raises(SettingsError, match=r"settings\.toml: not valid TOML"):
        Settings.load(path)


def test_presets_are_data_files() -> None:
    assert {"default", "simple-1", "min-p", "mirostat", "deterministic"} <= set(preset_names())
    assert load_preset("mirostat").mirostat == 2
    assert load_preset("deterministic").temperature == 0.0
    simple = load_preset("simple-1")
    assert (simple.temperature, simple.top_k, simple.top_p, simple.repeat_penalty) == (0.7, 20, 0.9, 1.15)


def test_typed_sections_cover_the_defaults_file_exactly() -> None:
    """Each typed section has one field per key of the defaults file, no more, so a
    default lives only in assets/settings.default.toml."""
    from dataclasses import fields

    from app.settings import _defaults
    from app.settings_view import SECTIONS

    defaults = _defaults()
    for name, cls in SECTIONS.items():
        assert {f.name for f in fields(cls)} == set(defaults[name]), name
    free = {"sampler", "model_settings", "keys", "engines"}
    assert set(defaults) == set(SECTIONS) | free


def test_typed_sections_read_the_users_values_and_fall_back_on_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[chat]\nmax_tokens = 300\nsystem = "Meow."\n[ui]\nshown_messages = -4\nimages = "off"\n')
    s = Settings.load(path)
    assert s.chat.max_tokens == 300 and s.chat.system == "Meow."
    assert s.ui.images == "off"
    assert s.ui.shown_messages == 60  # refused (below 1): the default, with a warning
    assert any("shown_messages" in w for w in s.warnings)
    assert s.model.gpu_layers == "auto" and s.persona.name == "User" and s.lore.placement == "card"
    s.set("chat", "max_tokens", 100)
    assert s.chat.max_tokens == 100  # read fresh: a change shows at once
