"""Settings: the fixed system prompt (typed, or a system-prompt preset to start from), the persona,
the sampler preset and its values, the reply length, the look and the keys. Saved to the settings
file (only what differs from the defaults and the preset), and applied to the open chat at once."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, Static, TextArea

from app.engine.options import SamplerSettings, load_preset, preset_names
from app.errors import CatteryError
from app.prompt.presets import SystemPreset, load_presets
from app.tui.keys import check_keys, display, key_table, keys_of
from app.tui.plain import cell, plain
from app.tui.screens.dialogs import AskScreen
from app.tui.screens.fitted import FittedScreen
from app.tui.state import SharedState

SAMPLER_FIELDS: list[tuple[str, str, type]] = [
    ("temperature", "Temperature (0 = greedy)", float),
    ("top_k", "Top K (0 = off)", int),
    ("top_p", "Top P", float),
    ("min_p", "Min P", float),
    ("typical_p", "Typical P", float),
    ("repeat_penalty", "Repetition penalty", float),
    ("repeat_last_n", "Penalty range (-1 = all)", int),
    ("presence_penalty", "Presence penalty", float),
    ("frequency_penalty", "Frequency penalty", float),
    ("mirostat", "Mirostat (0, 1, 2)", int),
    ("mirostat_tau", "Mirostat tau", float),
    ("mirostat_eta", "Mirostat eta", float),
    ("seed", "Seed (empty = random)", int),
]
IMAGE_MODES = [("auto: pictures where the terminal draws them", "auto"), ("on: always", "on"), ("off: initials", "off")]
OWN_TEXT = "(your own text below)"
CARD_PROMPT = [("wins; {{original}} in it is this one", True), ("is not used", False)]


class SettingsScreen(SharedState, FittedScreen):
    KEY_SECTION = "settings"
    BINDINGS: ClassVar[list[Binding]] = [
        Binding(a.keys, a.action, a.label, show=a.show, id=a.id) for a in key_table()["settings"]
    ]

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, str] = {}
        self.presets: dict[str, SystemPreset] = {}  # the system-prompt presets offered, by name
        self._asking = False

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="settings-body"):
            # What settings.toml holds that could not be used (each key fell back to its default).
            yield Static("", id="settings-warnings", classes="warning-line")
            yield Static("Prompt", classes="pane-title")
            yield Static(
                "System prompt: kept at the start of every chat (per chat or character: `cattery presets use`)",
                markup=False,
            )
            with Grid(classes="form"):
                yield Label("Start from a preset")
                yield Select([(OWN_TEXT, "")], id="system-preset", allow_blank=False, compact=True)
                yield Label("A card's own prompt")
                yield Select(CARD_PROMPT, id="prefer-card", allow_blank=False, compact=True)
            yield TextArea(id="system", soft_wrap=True)
            with Grid(classes="form"):
                yield Label("Your name")
                yield Input(id="persona-name", compact=True)
            yield Static("About you: what the characters know of {{user}}", markup=False)
            yield TextArea(id="persona-description", soft_wrap=True, classes="short")
            yield Static("Replies", classes="pane-title")
            with Grid(classes="form"):
                yield Label("Sampler preset")
                yield Select([(n, n) for n in preset_names()], id="preset", allow_blank=False, compact=True)
                yield Label("Longest reply (tokens)")
                yield Input(id="max_tokens", type="integer", compact=True)
            with Grid(classes="form form4"):
                for key, label, kind in SAMPLER_FIELDS:
                    yield Label(label)
                    yield Input(id=f"s-{key}", type="integer" if kind is int else "number", compact=True)
            yield Static("Look", classes="pane-title")
            with Grid(classes="form"):
                yield Label("Theme (Ctrl+P lists them too)")
                yield Select(
                    [(t, t) for t in sorted(self.app.available_themes)], id="theme", allow_blank=False, compact=True
                )
                yield Label("Avatars")
                yield Select(IMAGE_MODES, id="images", allow_blank=False, compact=True)
                yield Label("Messages shown when a chat opens")
                yield Input(id="shown_messages", type="integer", compact=True)
            yield Static("Keys (Enter on a row changes it)", classes="pane-title")
            yield DataTable(id="keys-table", cursor_type="row", zebra_stripes=True)
            with Horizontal(classes="buttons"):
                yield Button("Revert", id="revert")
                yield Button("Save", variant="primary", id="save")
            yield Static("", id="settings-state")
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        table = self.query_one("#keys-table", DataTable)
        table.add_column("action", key="action")
        table.add_column("keys", key="keys")
        table.add_column("id", key="id")
        self.load_values()

    def on_screen_resume(self) -> None:
        if self._asking:  # back from this screen's own dialog: keep what is being edited
            self._asking = False
            return
        self.load_values()

    # -- filling and reading the form -------------------------------------------------

    def show_warnings(self) -> None:
        warnings = self.shared.settings_warnings
        box = self.query_one("#settings-warnings", Static)
        box.display = bool(warnings)
        head = "Not used from the settings file (the defaults are used instead):"
        box.update(plain("\n".join([head, *(f"· {w}" for w in warnings)]) if warnings else ""))

    def load_values(self) -> None:
        ws = self.shared.ws
        s = ws.settings
        self.show_warnings()
        state = self.query_one("#settings-state", Static)
        state.set_class(False, "error-line")
        state.update(plain(f"file: {s.path}"))
        self._fill_system()
        self.query_one("#prefer-card", Select).value = s.chat.prefer_card_prompt
        self.query_one("#persona-name", Input).value = s.persona.name
        self.query_one("#persona-description", TextArea).text = s.persona.description
        preset = s.chat.preset
        select = self.query_one("#preset", Select)
        with select.prevent(Select.Changed):
            select.value = preset if preset in preset_names() else "default"
        try:
            sampler = ws.sampler()
        except CatteryError as exc:  # values that pass one by one but not together: the preset's are shown
            sampler = load_preset("default")
            state.set_class(True, "error-line")
            state.update(plain(f"{exc}; showing the default preset's values"))
        self._fill_sampler(sampler)
        self.query_one("#max_tokens", Input).value = str(s.chat.max_tokens)
        theme = self.query_one("#theme", Select)
        theme.value = self.app.theme if self.app.theme in self.app.available_themes else "textual-dark"
        self.query_one("#images", Select).value = s.ui.images
        self.query_one("#shown_messages", Input).value = str(s.ui.shown_messages)
        self.keys = dict(self.shared.keymap)
        self._fill_keys()

    def _fill_system(self) -> None:
        """The presets there are now (a file imported meanwhile shows), and the text in use: the chosen
        preset's, else the settings' own."""
        s = self.shared.ws.settings
        presets, problems = load_presets()
        self.presets = presets
        select = self.query_one("#system-preset", Select)
        chosen = s.chat.system_preset if s.chat.system_preset in presets else ""
        with select.prevent(Select.Changed):
            select.set_options([(OWN_TEXT, ""), *((self._preset_label(p), n) for n, p in sorted(presets.items()))])
            select.value = chosen
        self.query_one("#system", TextArea).text = presets[chosen].text if chosen else s.chat.system
        for problem in problems:  # a broken file of the user's: the others are still offered
            self.notify(f"skipped {problem}", severity="warning", timeout=10)

    @staticmethod
    def _preset_label(preset: SystemPreset) -> Text:
        about = " ".join((preset.description or preset.text).split())
        return cell(f"{preset.name}: {about}" if about else preset.name)  # a user's file: never markup

    @on(Select.Changed, "#system-preset")
    def system_preset_changed(self, event: Select.Changed) -> None:
        """A preset's text goes into the box, to use as it is or to edit (then it is the user's own)."""
        preset = self.presets.get(str(event.value)) if event.value else None
        if preset is not None:
            self.query_one("#system", TextArea).text = preset.text

    def _system_from_form(self) -> tuple[str, str]:
        """(preset, text) to save: the preset only while the box still holds its text unchanged."""
        text = self.query_one("#system", TextArea).text
        value = self.query_one("#system-preset", Select).value
        preset = self.presets.get(str(value)) if value else None
        return (preset.name if preset is not None and preset.text == text else ""), text

    def _fill_sampler(self, sampler: SamplerSettings) -> None:
        for key, _, _ in SAMPLER_FIELDS:
            value = getattr(sampler, key)
            self.query_one(f"#s-{key}", Input).value = "" if value is None else str(value)

    def _fill_keys(self) -> None:
        table = self.query_one("#keys-table", DataTable)
        row = table.cursor_row
        table.clear()
        for actions in key_table().values():
            for a in actions:
                table.add_row(a.text, display(keys_of(a.id, self.keys)), a.id, key=a.id)
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))

    @on(Select.Changed, "#preset")
    def preset_changed(self, event: Select.Changed) -> None:
        try:
            self._fill_sampler(load_preset(str(event.value)))
        except CatteryError as exc:
            self.notify(str(exc), severity="error")

    def _sampler_from_form(self) -> tuple[str, dict[str, Any], SamplerSettings]:
        """(preset, the values that differ from it, the sampler they make); errors name the field."""
        preset = str(self.query_one("#preset", Select).value)
        base = load_preset(preset)
        values: dict[str, Any] = {}
        for key, label, kind in SAMPLER_FIELDS:
            raw = self.query_one(f"#s-{key}", Input).value.strip()
            if not raw:
                if key != "seed":
                    raise CatteryError(f"{label}: a value is needed")
                values[key] = None
                continue
            try:
                values[key] = kind(raw)
            except ValueError:
                raise CatteryError(f"{label}: {raw!r} is not a number") from None
        sampler = dataclasses.replace(base, **values)
        raw_max = self.query_one("#max_tokens", Input).value.strip() or "0"
        sampler.max_tokens = int(raw_max) if raw_max.lstrip("-").isdigit() else 0
        sampler.validate()
        changed = {k: v for k, v in values.items() if v != getattr(base, k) and v is not None}
        return preset, changed, sampler

    # -- keys ---------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#keys-table")
    def change_key(self, event: DataTable.RowSelected) -> None:
        action_id = str(event.row_key.value)

        def done(value: str | None) -> None:
            if value is None:
                return
            try:
                self.keys[action_id] = check_keys(action_id, value)
            except CatteryError as exc:
                self.notify(str(exc), severity="error")
                return
            self._fill_keys()

        self._asking = True
        self.app.push_screen(
            AskScreen(
                f"Keys for: {action_id}",
                keys_of(action_id, self.keys),
                hint="Textual key names, separated by commas: ctrl+r, alt+left, f9, escape",
            ),
            done,
        )

    # -- saving ---------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "revert":
            self.load_values()

    def action_save(self) -> None:
        ws = self.shared.ws
        s = ws.settings
        state = self.query_one("#settings-state", Static)
        try:
            preset, changed, sampler = self._sampler_from_form()
            shown = int(self.query_one("#shown_messages", Input).value or "60")
            if shown < 1:
                raise CatteryError("messages shown: at least 1")
        except (CatteryError, ValueError) as exc:
            state.update(plain(f"not saved: {exc}"))
            state.set_class(True, "error-line")
            return
        name = self.query_one("#persona-name", Input).value.strip() or "User"
        system_preset, system = self._system_from_form()
        s.set("chat", "system", system)
        s.set("chat", "system_preset", system_preset)
        s.set("chat", "prefer_card_prompt", bool(self.query_one("#prefer-card", Select).value))
        s.set("persona", "name", name)
        s.set("persona", "description", self.query_one("#persona-description", TextArea).text)
        s.set("chat", "preset", preset)
        s.set("chat", "max_tokens", sampler.max_tokens)
        s.user["sampler"] = dict(changed)
        s.data["sampler"] = dict(changed)
        s.set("ui", "images", str(self.query_one("#images", Select).value))
        s.set("ui", "shown_messages", shown)
        defaults = {a.id: a.keys for actions in key_table().values() for a in actions}
        s.user["keys"] = {k: v for k, v in self.keys.items() if defaults.get(k) != v}
        s.data["keys"] = dict(s.user["keys"])
        problem = ws.save_settings()
        state.set_class(bool(problem), "error-line")
        if problem:
            state.update(plain(f"not saved: {problem}"))
            return
        theme = str(self.query_one("#theme", Select).value)
        if theme != self.app.theme:
            self.app.theme = theme
        self.cattery.apply_settings()
        self.show_warnings()  # the file as saved, with what was changed by hand meanwhile
        state.update(plain(f"saved to {s.path}"))
        self.notify("settings saved")
