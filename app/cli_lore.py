"""`cattery lore …`: the library of lorebooks (World Info) and where books are attached.

Thin calls into app/cards/lore_library.py and app/session/lore.py; the app's World Info
dialog (F9) does the same things. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.errors import CatteryError


def _workspace() -> Any:
    from app.cli import open_workspace

    return open_workspace()


def cmd_list(args: argparse.Namespace) -> int:
    ws = _workspace()
    books = ws.lore_library.books()
    everywhere = set(ws.global_lorebooks())
    if args.json:
        out = [
            {
                "name": b.name,
                "title": b.title,
                "entries": b.entries,
                "path": str(b.path),
                "every_chat": b.name in everywhere,
                "problem": b.problem,
            }
            for b in books
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if not books:
        print("no lorebooks in the library (`cattery lore import FILE` adds one)")
        return 0
    width = max(len(b.name) for b in books)
    for b in books:
        what = b.problem or f"{b.title}, {b.entries} entries" + (" · every chat" if b.name in everywhere else "")
        print(f"{b.name:<{width}}  {what}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    ws = _workspace()
    for file in args.files:
        book, new = ws.lore_library.add(Path(file).expanduser())
        if new:
            print(f"imported {book.title} as {book.name} ({book.entries} entries)")
        else:
            print(f"{file}: the same book is in the library already, as {book.name}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    ws = _workspace()
    name = args.name
    if ws.lore_library.path(name) is None:
        raise CatteryError(f"{name}: no such lorebook in the library (`cattery lore list`)")
    name = ws.lore_library.path(name).stem
    ws.store.forget_lorebook(name)
    problem = ws.set_global_lorebook(name, False)
    if problem:
        raise CatteryError(problem)
    ws.lore_library.remove(name)
    print(f"removed {name} (and detached it from every chat and character)")
    return 0


def _target(ws: Any, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(scope, store arguments) from --card / --chat / --global."""
    chosen = [x for x in (args.card is not None, args.chat is not None, args.every_chat) if x]
    if len(chosen) != 1:
        raise CatteryError("say where: --card NAME, --chat ID or --global (one of them)")
    if args.every_chat:
        return "global", {}
    if args.chat is not None:
        from app.cli import _chat_id

        return "chat", {"chat_id": _chat_id(ws, args.chat)}
    ref, card = ws.resolve_character(args.card)
    if ref is None or card is None:
        raise CatteryError("--card none has no character to attach a lorebook to")
    return "character", {"card_ref": ref}


def _stored_ref(ws: Any, ref: str) -> str:
    """What an attachment stores: a library name as the library spells it, else an absolute path."""
    found = ws.lore_library.path(ref)
    if found is not None:
        return found.stem
    path = ws.lore_library.resolve(ref)  # a file, or one line saying there is none
    from app.cards.lorebook import read_lorebook

    read_lorebook(path)  # refused now, not at every chat
    return str(path)


def cmd_attach(args: argparse.Namespace) -> int:
    ws = _workspace()
    scope, target = _target(ws, args)
    ref = _stored_ref(ws, args.book)
    if scope == "global":
        problem = ws.set_global_lorebook(ref, True)
        if problem:
            raise CatteryError(problem)
    else:
        ws.store.attach_lorebook(ref, **target)
    print(f"attached {ref} to " + {"global": "every chat", "chat": "the chat", "character": args.card or ""}[scope])
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    ws = _workspace()
    scope, target = _target(ws, args)
    found = ws.lore_library.path(args.book)
    ref = found.stem if found is not None else args.book
    if scope == "global":
        stored = [b for b in ws.global_lorebooks() if b in (ref, args.book)]
        if not stored:
            raise CatteryError(f"{args.book} is not attached to every chat (`cattery lore list`)")
        for b in stored:
            problem = ws.set_global_lorebook(b, False)
            if problem:
                raise CatteryError(problem)
    else:
        books = (
            ws.store.chat_lorebooks(target["chat_id"])
            if scope == "chat"
            else ws.store.card_lorebooks(target["card_ref"])
        )
        absolute = str(Path(args.book).expanduser().resolve())
        stored = [b for b in books if b in (ref, args.book, absolute)]
        if not stored:
            raise CatteryError(f"{args.book} is not attached there")
        for b in stored:
            ws.store.detach_lorebook(b, **target)
    print(f"detached {ref}")
    return 0


def add_parser(sub: Any) -> None:
    lore = sub.add_parser(
        "lore",
        help="lorebooks (World Info): the library, and books attached to characters, chats or every chat",
    )
    lsub = lore.add_subparsers(dest="lore_command", metavar="SUBCOMMAND", required=True)
    p = lsub.add_parser("list", help="the lorebooks in the library")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = lsub.add_parser("import", help="add World Info / lorebook JSON files to the library")
    p.add_argument("files", metavar="FILE", nargs="+")
    p.set_defaults(func=cmd_import)
    p = lsub.add_parser("rm", help="remove a lorebook from the library (and detach it everywhere)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_rm)
    for name, func, verb in (("attach", cmd_attach, "attach"), ("detach", cmd_detach, "detach")):
        p = lsub.add_parser(
            name, help=f"{verb} a lorebook (a library name or a file) to a character, a chat or every chat"
        )
        p.add_argument("book", metavar="BOOK")
        p.add_argument("--card", metavar="C", help="a character: every chat with them")
        p.add_argument("--chat", metavar="ID", help="one chat (`cattery chats list`)")
        p.add_argument("--global", dest="every_chat", action="store_true", help="every chat")
        p.set_defaults(func=func)
