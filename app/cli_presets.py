"""`cattery presets …`: system-prompt presets, SillyTavern's imported, and which one a chat uses.

Thin calls into app/prompt/presets.py, app/prompt/st_sysprompt.py and app/session/system_prompt.py;
the Settings screen (F6) picks the default the same way. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.errors import CatteryError


def _workspace() -> Any:
    from app.cli import open_workspace

    return open_workspace()


def _problems(problems: list[str]) -> None:
    for problem in problems:  # a broken file of the user's: the others are still listed
        print(f"warning: skipped {problem}", file=sys.stderr)


def cmd_list(args: argparse.Namespace) -> int:
    from app.prompt.presets import load_presets

    ws = _workspace()
    presets, problems = load_presets()
    _problems(problems)
    default = ws.settings.chat.system_preset
    if args.json:
        out = {
            name: {
                "description": p.description,
                "source": p.source,
                "file": str(p.path),
                "bundled": p.bundled,
                "default": name == default,
            }
            for name, p in sorted(presets.items())
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if not presets:
        print("no system-prompt presets (`cattery presets import FILE` adds SillyTavern's)")
        return 0
    width = max(len(n) for n in presets)
    for name, p in sorted(presets.items()):
        marks = [m for m, on in (("default", name == default), ("yours", not p.bundled)) if on]
        print(f"{name:<{width}}  {p.description}" + (f"  ({', '.join(marks)})" if marks else ""))
    if not default:
        print(f"(no default: chats start from [chat] system in {ws.settings.path})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from app.prompt.presets import get_preset

    p = get_preset(args.name)
    if args.json:
        out = {
            "name": p.name,
            "description": p.description,
            "source": p.source,
            "file": str(p.path),
            "text": p.text,
            "post_history": p.post_history,
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(f"{p.name}: {p.description}" if p.description else p.name)
    if p.source:
        print(f"from: {p.source}")
    print(f"file: {p.path}")
    print()
    print(p.text if p.text else "(empty: no system prompt)")
    if p.post_history:
        print()
        print("post-history instructions:")
        print(p.post_history)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from app.prompt.presets import user_preset_dirs
    from app.prompt.st_sysprompt import import_st_sysprompt

    target = import_st_sysprompt(Path(args.file).expanduser(), user_preset_dirs()[0], args.name)
    print(f"imported as preset {target.stem} ({target})")
    return 0


def cmd_use(args: argparse.Namespace) -> int:
    """Choose the preset for a chat, a character or every chat; `--clear` removes the choice."""
    from app.session import system_prompt as sp

    if bool(args.name) == bool(args.clear):
        raise CatteryError("give a preset's name, or --clear to remove the choice")
    if args.chat and args.card:
        raise CatteryError("--chat or --card: one at a time")
    name = "" if args.clear else args.name
    ws = _workspace()
    if args.chat:
        from app.cli import _chat_id

        chat_id = _chat_id(ws, args.chat)
        sp.set_chat_preset(ws, chat_id, name)
        where = f"chat {chat_id}"
    elif args.card:
        card_ref, _ = ws.resolve_character(args.card)
        if card_ref is None:
            raise CatteryError(f"{args.card}: not a character (`cattery cards list`)")
        sp.set_character_preset(ws, card_ref, name)
        where = f"the character {args.card}"
    else:
        problem = sp.set_default_preset(ws, name)
        if problem:
            raise CatteryError(problem)
        where = "every chat without its own"
    print(f"{where}: {'preset ' + name if name else 'no preset chosen'}")
    return 0


def add_parser(sub: Any) -> None:
    presets = sub.add_parser("presets", help="system-prompt presets: list, show, import SillyTavern's, choose")
    presets.add_argument("--json", action="store_true")
    presets.set_defaults(func=cmd_list)
    psub = presets.add_subparsers(dest="presets_command", metavar="SUBCOMMAND")
    show = psub.add_parser("show", help="a preset's text and where it came from")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    imp = psub.add_parser("import", help="add a SillyTavern system-prompt preset (JSON) as a preset")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--name", help="the new preset's name (default: the preset's own)")
    imp.set_defaults(func=cmd_import)
    use = psub.add_parser(
        "use",
        help="the preset a chat starts from: for one chat, one character, or every chat (the settings)",
        description="Choose a system-prompt preset. A chat's choice wins over its character's, which wins over "
        "the settings' ([chat] system_preset); --system on the command line wins over all. A card's own system "
        "prompt still wins unless [chat] prefer_card_prompt = false; {{original}} in it stands for the preset.",
    )
    use.add_argument("name", metavar="NAME", nargs="?")
    use.add_argument("--chat", metavar="ID", help="for this saved chat (`cattery chats list`)")
    use.add_argument("--card", metavar="C", help="for every chat with this character")
    use.add_argument("--clear", action="store_true", help="remove the choice (the next one down is used)")
    use.set_defaults(func=cmd_use)
