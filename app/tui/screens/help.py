"""F1: every key, by where it works, with the user's remapped keys; how to change them."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from app.tui.keys import SECTION_TITLES, display, key_table, keys_of
from app.tui.state import SharedState

INTRO = (
    "Keys are remapped in settings.toml under [keys] by the action's id, e.g. "
    '"chat.regenerate" = "ctrl+r,f9" (`cattery paths` says where the file is). '
    "Ctrl+P opens the command palette: every action below is there too, and the themes."
)


class HelpScreen(SharedState, ModalScreen[None]):
    BINDINGS: ClassVar[list[Binding]] = [Binding("escape,f1,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        keymap = self.shared.keymap
        with VerticalScroll():
            yield Static("Cattery: keys", classes="pane-title")
            yield Static(INTRO, classes="muted", markup=False)
            for section, actions in key_table().items():
                yield Static(SECTION_TITLES.get(section, section), classes="help-section")
                table: DataTable[str] = DataTable(cursor_type="none", zebra_stripes=True, show_header=False)
                table.add_column("keys", width=24)
                table.add_column("what", width=56)
                table.add_column("id", width=26)
                for a in actions:
                    table.add_row(display(keys_of(a.id, keymap)), a.text, a.id)
                yield table
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def action_close(self) -> None:
        self.dismiss(None)
