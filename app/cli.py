"""The `cattery` command: argument parsing and thin calls into the core packages.

Nothing heavy is imported at module level, so `cattery --help` answers at once
and never loads llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import __version__
from app.errors import CatteryError

# -- shared option groups ----------------------------------------------------------


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """--engine and what goes with it: the same words wherever a command can run on a server."""
    parser.add_argument(
        "--engine",
        metavar="URL|NAME",
        help="chat through an inference server (llama-server, vLLM, llama-cpp-python's server) instead of "
        "loading a model: a URL, or a name from the settings' [engines.NAME]; Cattery renders the prompt, "
        "the server completes it",
    )
    parser.add_argument("--engine-model", metavar="ID", help="the server's model to use (default: the one it serves)")
    parser.add_argument(
        "--engine-tokenizer",
        metavar="GGUF|JSON|REPO",
        help="count the window's tokens with the served model's tokenizer: a GGUF (a path or library name; "
        "its vocabulary only), a tokenizer.json, or a hub repo whose tokenizer.json is fetched; for servers "
        "without a tokenizer endpoint; its chat template serves --format gguf",
    )
    parser.add_argument(
        "--engine-key-env",
        metavar="VAR",
        help="the environment variable holding the server's API key (sent as a bearer token, never saved)",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and loading")
    g.add_argument(
        "-m", "--model", metavar="M", help="a .gguf path or a library name (default: last used, else the bundled model)"
    )
    g.add_argument("--ctx", type=int, metavar="N", help="context size in tokens (rounded up to a multiple of 256)")
    g.add_argument("--gpu-layers", metavar="auto|all|N", help="layers to offload to the GPU (default auto)")
    g.add_argument("--threads", type=int, metavar="N", help="generation threads (default: physical cores)")
    g.add_argument("--threads-batch", type=int, metavar="N", help="prompt threads (default: logical cores)")
    g.add_argument("--batch", type=int, metavar="N", help="prompt batch size (default 512)")
    g.add_argument("--flash-attn", choices=["auto", "on", "off"], help="flash attention (default auto)")
    g.add_argument("--cache-type-k", metavar="TYPE", help="K cache type: f16, q8_0, q4_0, … (default f16)")
    g.add_argument("--cache-type-v", metavar="TYPE", help="V cache type (quantized types need flash attention)")
    g.add_argument("--no-mmap", action="store_true", help="read the model into memory instead of mapping it")
    g.add_argument("--mlock", action="store_true", help="lock the model in RAM")
    g.add_argument("--rope-freq-base", type=float, metavar="F", help="override the RoPE base frequency (NTK scaling)")
    g.add_argument(
        "--rope-scale", type=float, metavar="F", help="linear RoPE scale factor, e.g. 2 to run a 4k model at 8k"
    )
    g.add_argument("--no-memory-check", action="store_true", help="load even if the model looks too big for RAM")


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--preset", metavar="NAME", help="sampler preset from assets/samplers (default: settings, else 'default')"
    )
    g.add_argument("--temp", "--temperature", dest="temperature", type=float, metavar="T", help="0 = greedy")
    g.add_argument("--top-k", type=int, metavar="K")
    g.add_argument("--top-p", type=float, metavar="P")
    g.add_argument("--min-p", type=float, metavar="P")
    g.add_argument("--typical-p", type=float, metavar="P")
    g.add_argument("--repeat-penalty", type=float, metavar="F")
    g.add_argument(
        "--repeat-last-n", type=int, metavar="N", help="tokens the penalties look back over (-1 = whole context)"
    )
    g.add_argument("--presence-penalty", type=float, metavar="F")
    g.add_argument("--frequency-penalty", type=float, metavar="F")
    g.add_argument("--mirostat", type=int, choices=[0, 1, 2])
    g.add_argument("--mirostat-tau", type=float, metavar="F")
    g.add_argument("--mirostat-eta", type=float, metavar="F")
    g.add_argument("--seed", type=int, metavar="N", help="fixed seed for reproducible replies (default random)")
    g.add_argument("-n", "--max-tokens", type=int, metavar="N", help="longest reply in tokens")
    g.add_argument("--ban-eos", action="store_true", help="never end a reply on the end-of-text token")


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt")
    g.add_argument("--format", metavar="F", help="prompt format (`cattery formats`); default: the model's own template")
    g.add_argument("--system", metavar="TEXT", help="the system prompt (default: from settings)")
    g.add_argument("--user", metavar="NAME", help="your name in the chat (default: the persona's, User)")
    g.add_argument("--char", metavar="NAME", help="the model's name when no card is used (default Assistant)")
    g.add_argument(
        "--lorebook",
        metavar="FILE",
        action="append",
        help="a World Info / lorebook JSON to use beside the card's own (repeatable)",
    )
    g.add_argument(
        "--lore-placement",
        choices=["card", "end"],
        help="active lore entries around the character (card) or right before the reply (end)",
    )
    g.add_argument(
        "--author-note",
        metavar="TEXT",
        help="an Author's Note: inserted near the end of the prompt to steer the chat ({{char}}, {{user}} work); "
        'saved with the chat in the app; "" removes it',
    )
    g.add_argument(
        "--note-depth",
        type=int,
        metavar="N",
        help="messages from the end the note goes before (0: right before the reply; default 4)",
    )
    g.add_argument(
        "--note-every",
        type=int,
        metavar="N",
        help="insert the note every N user turns (1: always, the default; 0: never)",
    )
    g.add_argument(
        "--note-role", choices=["system", "user", "assistant"], help="the role the note is written in (default system)"
    )
    g.add_argument(
        "--card",
        metavar="C",
        help="character: a library name, a card file, a bundled card (mochi, "
        "narrator), or none (default: settings, else mochi)",
    )


# -- building blocks from arguments and settings -------------------------------------


def open_workspace() -> Any:
    """The workspace for a command, with the settings file's problems printed as warnings."""
    from app.session.workspace import Workspace

    ws = Workspace()
    for warning in ws.settings.warnings:  # values of the settings file that were not used, and why
        print(f"warning: {warning}", file=sys.stderr)
    return ws


def _load_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from app.session.workspace import LOAD_KEYS

    over: dict[str, Any] = {"ctx": args.ctx, "gpu_layers": args.gpu_layers}
    over.update({name: getattr(args, name) for name in LOAD_KEYS})
    if args.no_mmap:
        over["mmap"] = False
    if args.mlock:
        over["mlock"] = True
    if args.no_memory_check:
        over["check_memory"] = False
    return over


def _sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from app.session.workspace import SAMPLER_KEYS

    over = {k: getattr(args, k, None) for k in SAMPLER_KEYS}
    over["ban_eos"] = bool(getattr(args, "ban_eos", False))
    return over


PICK_ANOTHER = "pick another with --model M (`cattery models list` shows the library)"


def model_argument(ws: Any, ref: str | None) -> Path:
    """The model asked for: the one resolver of every command that takes a model (a path, a library
    name, or `owner/repo[:QUANT|:file]`, which is downloaded first, with progress), so a name that works
    in one works in all; without one, the default or last used model, and a remembered one that is gone
    is one line saying how to choose."""
    from app.errors import ModelFileError
    from app.hub.names import parse_ref
    from app.session.workspace import RememberedModelGone

    try:
        return ws.pick_model(ref)
    except RememberedModelGone as exc:
        raise ModelFileError(f"{exc}; {PICK_ANOTHER}") from None
    except ModelFileError as exc:
        hub = parse_ref(ref) if ref else None
        if hub is None or "not downloaded" not in str(exc):
            raise
    from app.hub.download import download, plan_download
    from app.progress import ProgressPrinter
    from app.units import fmt_size

    plan = plan_download(hub)
    if plan.kind != "gguf":
        raise CatteryError(f"{ref}: a safetensors checkpoint, not a GGUF model: convert it with `cattery convert`")
    print(f"downloading {plan.label} ({fmt_size(plan.size)})", file=sys.stderr)
    bar = ProgressPrinter(plan.label, every=10)
    try:
        paths = download(plan, progress=bar.download)
    finally:
        bar.end_line()
    return paths[0]


def _connect_engine(args: argparse.Namespace, ws: Any) -> tuple[Any, Any]:
    """(a remote engine, connected, and its prompt format) for `--engine URL|NAME`: the format is the
    one asked for, else the settings', else the served model's template (the local tokenizer's, or
    llama-server's /props), else a guess from the served model's name, else ChatML."""
    from app.cli_engines import remote_engine

    engine = remote_engine(
        ws, args.engine, model=args.engine_model, key_env=args.engine_key_env, ctx=getattr(args, "ctx", None),
        tokenizer=args.engine_tokenizer,
    )  # fmt: skip
    report = engine.connect()
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return engine, ws.chat_format(None, engine.info, getattr(args, "format", None))


def _load_engine(args: argparse.Namespace, ws: Any) -> tuple[Any, Any]:
    """(the loaded engine, its prompt format) as the app loads a model: through `Workspace.model_load`,
    with what the Models screen (or a build) chose for this file under what the command line says."""
    from app.engine.engine import Engine

    plan = ws.model_load(model_argument(ws, args.model), _load_overrides(args), args.format)
    engine = Engine(log_file=ws.paths.llama_log)
    report = engine.load(plan.path, plan.options, default_ctx=plan.default_ctx)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    problem = ws.remember_model(plan.path)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    try:
        choice = ws.chat_format(plan.path, engine.info, plan.format)
    except BaseException:
        engine.close()
        raise
    return engine, choice


# -- commands ------------------------------------------------------------------------


def _recipe(
    args: argparse.Namespace, ws: Any, system: str | None, chat_seed: int, note: Any = None
) -> tuple[str | None, Any]:
    """(the card's reference, the prompt recipe) for a chat or `prompt`, from the arguments and settings;
    `note`: an Author's Note the history came with (a SillyTavern chat file's), under the options given."""
    ref = args.card if args.card is not None else ws.default_character()
    card_ref, card = ws.resolve_character(ref)
    recipe = ws.recipe(
        card,
        system=system,
        user=args.user,
        char=args.char,
        lorebooks=args.lorebook,
        lore_placement=args.lore_placement,
        chat_seed=chat_seed,
        card_ref=card_ref,
        note=_note(args, note),
    )
    for warning in recipe.lore.warnings if recipe.lore is not None else []:  # an attached book that is gone
        print(f"warning: {warning}", file=sys.stderr)
    return card_ref, recipe


def _note_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The Author's Note options given (None: none), checked at once: a bad one is one line before anything loads."""
    from app.session.authors_note import AuthorsNote, note_from_options

    options = {"text": args.author_note, "depth": args.note_depth, "every": args.note_every, "role": args.note_role}
    if all(v is None for v in options.values()):
        return None
    note_from_options(AuthorsNote("check"), **options)
    return options


def _note(args: argparse.Namespace, base: Any = None) -> Any:
    """The Author's Note a command builds its prompt with: the options given, over `base` (a saved chat's)."""
    from app.session.authors_note import note_from_options

    options = _note_options(args)
    return note_from_options(base, **options) if options else base


def cmd_chat(args: argparse.Namespace) -> int:
    ws = open_workspace()
    sampler = ws.sampler(args.preset, _sampler_overrides(args))
    if args.tui or (not args.plain and sys.stdin.isatty() and sys.stdout.isatty()):
        return _run_tui(args, ws, sampler)
    from app.plain_chat import PlainChat
    from app.session.chat import open_session, restart_session, start_session
    from app.session.kv_keeper import KVKeeper, Restored

    chat_id, card_ref = _chat_to_continue(args, ws)  # the character checked before the model loads
    overrides = _session_overrides(args)
    engine, choice = _connect_engine(args, ws) if args.engine else _load_engine(args, ws)
    keeper = None
    held = None
    try:
        report = engine.report
        assert report is not None
        if choice.warning:
            print(f"warning: {choice.warning}", file=sys.stderr)
        if chat_id is not None:
            session = open_session(ws, chat_id, sampler=sampler, **overrides)
        else:
            session = start_session(ws, card_ref, sampler=sampler, **overrides)
        held = _hold_chat(ws, session.chat_id)
        _remember_chat(ws, session.chat_id)  # as the app does: the next start continues it
        for warning in session.recipe.lore.warnings if session.recipe.lore is not None else []:
            print(f"warning: {warning}", file=sys.stderr)  # an attached book that is gone
        session.attach(engine, choice)
        session.thinking_default = _thinking_default(args, session.thinking_default)
        keeper = KVKeeper.for_workspace(ws, engine)
        restored = keeper.restore(session) if keeper is not None and chat_id is not None else Restored()
        if restored.note:
            print(f"warning: {restored.note}", file=sys.stderr)
        builder = session.builder
        assert builder is not None
        cp = session.recipe.card
        for warning in _lint_warnings(builder, builder.tokenizer):
            print(f"warning: {warning}", file=sys.stderr)
        interactive = sys.stdin.isatty()
        format_note = f"{choice.name} ({choice.why})"
        name = report.model if getattr(report, "remote", False) else report.path.name
        print(
            f"{name} · {report.placement} · ctx {report.n_ctx} · format {format_note}"
            + (f" · character {cp.char}" if cp is not None else "")
            + ". "
            "/help for commands" + (", Ctrl-D to leave." if interactive else "."),
            file=sys.stderr,
            flush=True,
        )

        def restart() -> Any:
            nonlocal held
            new = restart_session(ws, chat.session, **overrides)
            held.release()  # the old chat is left: the app may open it now
            held = _hold_chat(ws, new.chat_id)
            _remember_chat(ws, new.chat_id)
            return new

        chat = PlainChat(
            session,
            restart,
            interactive=interactive,
            format_note=format_note,
            keeper=keeper,
            restored=restored,
            show_thinking=not args.hide_thinking,
        )
        chat.greet(continued=chat_id is not None)
        return chat.run()
    finally:
        if keeper is not None:
            keeper.close()  # what is queued is written before the model goes
        engine.close()
        if held is not None:
            held.release()
        ws.close()


def _thinking_default(args: argparse.Namespace, base: Any) -> Any:
    """This run's thinking choices from the command line, over the settings'; a chat's own (its
    `/thinking` switches) still win."""
    import dataclasses

    changes: dict[str, Any] = {}
    if args.no_thinking:
        changes["enabled"] = False
    if args.keep_reasoning:
        changes["keep"] = True
    if args.thinking_budget is not None:
        if args.thinking_budget < 0:
            raise CatteryError("--thinking-budget is a number of tokens, 0 or more")
        changes["budget"] = args.thinking_budget
    return dataclasses.replace(base, **changes)


def _chat_asked(args: argparse.Namespace, ws: Any) -> int | None:
    """The saved chat given with --chat (checked: it exists, and nothing else asks for another)."""
    if args.chat is None:
        return None
    if args.new or args.card is not None:
        raise CatteryError("--chat continues a saved chat with its own character; leave out --new and --card")
    return _chat_id(ws, args.chat)


def _chat_to_continue(args: argparse.Namespace, ws: Any) -> tuple[int | None, str | None]:
    """(the saved chat the line chat continues, None for a new one; the character a new one
    gets), chosen as the app chooses; never the chat a running app has open (two writers would
    mix its messages): then a new one."""
    from app.instance import chat_in_use, refuse_if_in_use
    from app.session.chat import chat_to_open

    asked = _chat_asked(args, ws)
    if asked is not None:
        refuse_if_in_use(ws.paths.data_dir, ws.store, asked, "continue")
        return asked, None
    card_ref = ws.resolve_character(args.card)[0] if args.card is not None else None
    chat_id = chat_to_open(ws, by_card=args.card is not None, card_ref=card_ref, new=args.new)
    holder = chat_in_use(ws.paths.data_dir, ws.store, chat_id) if chat_id is not None else None
    if holder is not None:
        print(f"(chat {chat_id} is open in {holder.where()}: this is a new chat)", file=sys.stderr)
        chat_id = None
    if chat_id is None and args.card is None:  # a new chat with the default character (only then read)
        card_ref = ws.resolve_character(ws.default_character())[0]
    return chat_id, card_ref


def _hold_chat(ws: Any, chat_id: int) -> Any:
    """The line chat holds the chat it writes into (`instance.claim_chat`), so the app does not
    open it meanwhile. Another line chat that took it in the moment since it was chosen: refused."""
    from app.instance import claim_chat, refuse_if_in_use

    lock = claim_chat(ws.paths.data_dir, chat_id)
    if lock is None:
        refuse_if_in_use(ws.paths.data_dir, ws.store, chat_id, "continue")
        raise CatteryError(f"chat {chat_id} is open in another line chat")
    return lock


def _remember_chat(ws: Any, chat_id: int) -> None:
    """The next start continues this chat, unless an app runs: it records the chat it has open
    there, which is how the other commands know not to touch that one."""
    from app.instance import running_app

    if running_app(ws.paths.data_dir) is None:
        ws.store.set_state("last_chat", str(chat_id))


def _session_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the command line asks of this run's chat (app and line chat alike)."""
    return {
        "system": args.system,
        "user": args.user,
        "char": args.char,
        "lorebooks": args.lorebook,
        "lore_placement": args.lore_placement,
        "note": _note_options(args),
    }


def _run_tui(args: argparse.Namespace, ws: Any, sampler: Any) -> int:
    """The full-screen app, one per data folder (app/instance.py): a second one is one line
    saying where the first runs, before anything is loaded or downloaded."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CatteryError("the full-screen chat needs a terminal; use --plain for pipes and scripts")
    from app.instance import claim_app

    with claim_app(ws.paths.data_dir):
        return _start_tui(args, ws, sampler)


def _start_tui(args: argparse.Namespace, ws: Any, sampler: Any) -> int:
    """What the user typed is checked here, so a bad card or a missing model is one line on
    stderr; the model itself loads inside the app, in the background."""
    from app.session.launch import Launch
    from app.session.workspace import RememberedModelGone

    try:
        model: Path | None = model_argument(ws, args.model) if args.model else ws.pick_model(None)
    except RememberedModelGone:
        model = None  # the app opens all the same, and its model line says what is gone
    chat_id = _chat_asked(args, ws)
    card_ref = None
    if args.card is not None:
        card_ref, _ = ws.resolve_character(args.card)
    if args.format:
        from app.prompt.formats import GGUF, get_format

        if args.format != GGUF:
            get_format(args.format)
    lorebooks = []  # absolute: the app resolves them again, from wherever it runs
    for book in args.lorebook or []:
        from app.cards.lorebook import read_lorebook

        path = ws.lorebook_path(book)  # a file or a library book, or one line saying there is none
        read_lorebook(path)
        lorebooks.append(str(path))
    launch = Launch(
        model=model,
        load_overrides=_load_overrides(args),
        card_ref=card_ref,
        card_explicit=args.card is not None,
        format=args.format,
        system=args.system,
        user=args.user,
        char=args.char,
        lorebooks=lorebooks,
        lore_placement=args.lore_placement,
        note=_note_options(args),
        sampler=sampler,
        new_chat=args.new,
        chat_id=chat_id,
    )
    from app.terminal import raw_stream
    from app.tui.run import run_app

    engine = None
    if args.engine:  # connected before the app starts: a server that is not there is one line here
        engine, _ = _connect_engine(args, ws)
    # The app draws on the terminal itself and strips what it shows; it gets the real streams.
    wrapped = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = raw_stream(sys.stdout), raw_stream(sys.stderr)
    try:
        return run_app(ws, launch, engine)
    finally:
        sys.stdout, sys.stderr = wrapped
        if engine is not None:
            engine.close()


def cmd_formats(args: argparse.Namespace) -> int:
    from app.prompt.formats import GGUF, available_formats

    formats = available_formats()
    if args.json:
        out = {name: {"description": f.description, "file": str(f.source)} for name, f in formats.items()}
        out[GGUF] = {"description": "the model's own chat template from its GGUF file", "file": None}
        print(json.dumps(out, indent=2))
        return 0
    width = max(len(n) for n in [*formats, GGUF])
    for name, fmt in sorted(formats.items()):
        print(f"{name:<{width}}  {fmt.description}")
    print(f"{GGUF:<{width}}  the model's own chat template from its GGUF file (sandboxed Jinja)")
    return 0


def cmd_formats_import(args: argparse.Namespace) -> int:
    from app.prompt.formats import user_format_dirs
    from app.prompt.st_import import import_st_preset

    target = import_st_preset(Path(args.file), user_format_dirs()[0], args.name)
    print(f"imported as format {target.stem} ({target})")
    return 0


def cmd_formats_lint(args: argparse.Namespace) -> int:
    """Check a format against a model's tokenizer: by default the format a chat would use with the
    model a chat would use (its own template, the one saved for it, or the settings')."""
    from app.engine.metadata import read_model_info
    from app.prompt.builder import PromptBuilder
    from app.prompt.lint import lint

    ws = open_workspace()
    if args.engine:  # the served model's tokenizer and template, as a chat through it would use them
        return _lint_on_engine(args, ws)
    path = model_argument(ws, args.model) if args.model else _chat_model(ws)
    info = vocab = tokenizer = None
    if path is not None:
        from app.engine.native import VocabModel
        from app.prompt.tokens import tokenizer_from

        info = read_model_info(path)
        vocab = VocabModel(info.path)
        tokenizer = tokenizer_from(vocab)
    try:
        choice = ws.chat_format(path, info, args.format_name)
        builder = PromptBuilder(choice.name, info=info, tokenizer=tokenizer, system="S")
        warnings = lint(builder, tokenizer)
    finally:
        if vocab is not None:
            vocab.close()
    what = f"format {choice.name} ({choice.why})" + (f" with {path.name}" if path is not None else "")
    return _say_lint(what, warnings, info is not None)


def _lint_on_engine(args: argparse.Namespace, ws: Any) -> int:
    from app.prompt.builder import PromptBuilder
    from app.prompt.lint import lint
    from app.prompt.tokens import tokenizer_from

    engine, default = _connect_engine(args, ws)
    try:
        choice = ws.chat_format(None, engine.info, args.format_name) if args.format_name else default
        tokenizer = tokenizer_from(engine)
        builder = PromptBuilder(choice.name, info=engine.info, tokenizer=tokenizer, system="S")
        warnings = lint(builder, tokenizer)
        where = engine.report.placement
    finally:
        engine.close()
    return _say_lint(f"format {choice.name} ({choice.why}) with {where}", warnings, True)


def _say_lint(what: str, warnings: list[str], with_tokens: bool) -> int:
    for warning in warnings:
        print(f"warning: {warning}")
    if warnings:
        print(f"{what}: {len(warnings)} problem" + ("" if len(warnings) == 1 else "s"))
    else:
        print(f"{what}: no problems found" + ("" if with_tokens else " (give --model to check tokens)"))
    return 1 if warnings else 0


def _lint_warnings(builder: Any, tokenizer: Any) -> list[str]:
    from app.prompt.lint import lint

    return lint(builder, tokenizer)


def _card_library() -> Any:
    from app.cards.library import CardLibrary
    from app.paths import get_paths

    return CardLibrary(get_paths().cards_dir)


def cmd_cards_import(args: argparse.Namespace) -> int:
    from app.cards.read import read_card

    library = _card_library()
    failed = 0
    for file in args.files:
        try:
            card = read_card(Path(file))
            entry = library.add(card, str(Path(file).resolve()))
        except CatteryError as exc:
            print(f"cattery: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"imported {card.name} as {entry.slug}")
    return 2 if failed else 0


def cmd_cards_list(args: argparse.Namespace) -> int:
    from app.cards.errors import CardError

    rows = []
    for entry in _card_library().entries():
        try:
            card = entry.load()
        except CardError as exc:
            print(f"warning: {exc}", file=sys.stderr)
            continue
        d = card.data
        rows.append(
            {
                "id": entry.slug,
                "name": card.name,
                "creator": d["creator"],
                "tags": d["tags"],
                "greetings": 1 + len(d["alternate_greetings"]),
                "spec": card.spec,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif not rows:
        print("no cards yet: `cattery cards import FILE` adds one", file=sys.stderr)
    for r in [] if args.json else rows:
        tags = f"  [{', '.join(r['tags'])}]" if r["tags"] else ""
        print(f"{r['id']}  {r['name']}" + (f" by {r['creator']}" if r["creator"] else "") + tags)
    return 0


def _card_from_ref(ref: str) -> Any:
    from app.cards.read import read_card

    path = Path(ref).expanduser()
    try:
        is_file = path.is_file()
    except OSError:  # a name too long to be a path is a card's name
        is_file = False
    if is_file:
        return read_card(path)
    return _card_library().find(ref).load()


def cmd_cards_show(args: argparse.Namespace) -> int:
    card = _card_from_ref(args.card)
    if args.json:
        print(json.dumps(card.to_v3(), indent=2, ensure_ascii=False))
        return 0
    d = card.data
    print(f"{card.name}" + (f" ({d['nickname']})" if d.get("nickname") else "") + f"  [{card.spec}]")
    for key in ("creator", "character_version", "tags"):
        if d.get(key):
            print(f"{key}: {', '.join(d[key]) if isinstance(d[key], list) else d[key]}")
    for key in ("description", "personality", "scenario", "system_prompt", "post_history_instructions", "first_mes"):
        if d.get(key):
            print(f"\n{key}:\n{d[key]}")
    if d["alternate_greetings"]:
        print(f"\nalternate greetings: {len(d['alternate_greetings'])}")
    book = d.get("character_book")
    if book:
        print(f"lorebook: {len(book.get('entries', []))} entries")
    return 0


def cmd_cards_export(args: argparse.Namespace) -> int:
    from app.atomic import write_bytes_atomic
    from app.cards.write import json_bytes, to_charx, to_png

    card = _card_library().find(args.card).load()
    data = {"png": to_png, "charx": to_charx, "json": lambda c: json_bytes(c.to_v3())}[args.to](card)
    out = Path(args.output).expanduser()
    try:
        write_bytes_atomic(out, data)
    except OSError as exc:
        raise CatteryError(f"{out}: cannot write: {exc.strerror}") from None
    print(f"wrote {out}")
    return 0


def cmd_cards_rm(args: argparse.Namespace) -> int:
    entry = _card_library().remove(args.card)
    print(f"removed {entry.slug}")
    return 0


ST_HEADER_KEYS = ("user_name", "character_name", "create_date", "chat_metadata")


def _read_history(path: str) -> tuple[list[Any], dict[str, Any]]:
    """(the messages, the speakers' names a SillyTavern file gives) of a history file: a JSON list of
    {"role", "content", "name"?}, or a SillyTavern chat file (JSONL), as `cattery chats export` writes it,
    read by the same reader as `chats import`."""
    from app.chats.transfer import read_st_chat
    from app.errors import InputError
    from app.prompt.segments import Message
    from app.untrusted import parse_json, read_bounded

    try:
        data = parse_json(read_bounded(Path(path), 64 << 20, "chat history"), path)
    except InputError as exc:
        data = None
        if not _looks_like_jsonl(Path(path)):
            raise CatteryError(str(exc)) from None
    if data is None or (isinstance(data, dict) and any(k in data for k in ST_HEADER_KEYS)):
        names, stored = read_st_chat(Path(path))
        return [Message(m.role, m.swipes[m.active], m.name) for m in stored], names
    if not isinstance(data, list):
        raise CatteryError(f"{path}: expected a JSON list of messages, or a SillyTavern chat file (JSONL)")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise CatteryError(f"{path}: message {i} is not an object")
        try:
            out.append(Message.from_dict(item))
        except ValueError as exc:
            raise CatteryError(f"{path}: message {i}: {exc}") from None
    return out, {}


def _looks_like_jsonl(path: Path) -> bool:
    """Whether the file's first line is a JSON object of its own: a SillyTavern chat file's header."""
    from app.untrusted import parse_json

    try:
        with path.open("rb") as f:
            first = f.readline(1 << 20)
        return isinstance(parse_json(first, str(path)), dict)
    except (OSError, CatteryError, ValueError):
        return False


def _prompt_model(ws: Any, args: argparse.Namespace) -> Path | None:
    """The model whose tokenizer and template the prompt is built for: `-m`; else, for a saved chat or
    when no `--format` is given, the one a chat would use (the default or last used, else the bundled);
    with `--format` alone, none (the text only, as the contract of `cattery prompt` says)."""
    if args.model:
        return model_argument(ws, args.model)
    if args.format and not args.chat:
        return None
    return _chat_model(ws)


def _chat_model(ws: Any) -> Path | None:
    """The model a chat would use (default, last used, bundled); None when there is none at all.
    A remembered model that is gone is an error, as in a chat: never quietly another model's numbers."""
    from app.session.workspace import RememberedModelGone

    try:
        return ws.pick_model(None)
    except RememberedModelGone as exc:
        raise CatteryError(f"{exc}; {PICK_ANOTHER}") from None
    except CatteryError:  # no model at all (no bundled one): the prompt's text, without token counts
        return None


def cmd_prompt(args: argparse.Namespace) -> int:
    import dataclasses

    from app.engine.metadata import read_model_info
    from app.engine.options import round_ctx
    from app.prompt.window import WindowState
    from app.session.chat import reply_reserve
    from app.session.lore import lore_report

    ws = open_workspace()
    settings = ws.settings
    if args.chat and args.history:
        raise CatteryError("--chat and --history: give one (the saved chat, or a file of messages)")
    if args.chat and args.card is not None:
        raise CatteryError("--chat: the chat has its own character; leave out --card")
    session = None
    history: list[Any] = []
    names: dict[str, Any] = {}
    if args.chat:
        from app.session.chat import open_session

        session = open_session(
            ws,
            _chat_id(ws, args.chat),
            system=args.system,
            user=args.user,
            char=args.char,
            lorebooks=args.lorebook,
            lore_placement=args.lore_placement,
        )
        history = session.history()
    elif args.history:
        history, names = _read_history(args.history)
    # A leading system message is the system prompt (unless --system overrides it).
    leading = history.pop(0).content if session is None and history and history[0].role == "system" else None
    system = args.system if args.system is not None else leading  # None: the chat's preset, else the settings'
    path = _prompt_model(ws, args)
    info = read_model_info(path) if path is not None else None
    choice = ws.chat_format(path, info, args.format)
    if choice.warning and not args.json:
        print(f"warning: {choice.warning}", file=sys.stderr)
    tokenizer = vocab = None
    n_ctx = None
    try:
        if info is not None and path is not None:
            from app.engine.native import VocabModel
            from app.prompt.tokens import tokenizer_from

            vocab = VocabModel(info.path)
            tokenizer = tokenizer_from(vocab)
            n_ctx = round_ctx(args.ctx) if args.ctx else ws.chat_context(path, info)
        wanted = args.reserve if args.reserve is not None else settings.chat.max_tokens
        reserve = reply_reserve(wanted, n_ctx)
        if session is not None:
            recipe = dataclasses.replace(session.recipe, note=_note(args, session.recipe.note))  # never saved here
            state = session.saved_window(path, n_ctx)  # where the chat's window stands: the next turn's
        else:
            if args.card is None and names.get("character_name"):
                args.card, args.char = _history_character(ws, names["character_name"], args.char)
            from app.session.authors_note import AuthorsNote

            _, recipe = _recipe(args, ws, system, 0, AuthorsNote.from_dict(names.get("author_note")))
            state = WindowState()
        builder = recipe.builder(choice.name, info, tokenizer)
        if session is not None:  # as a turn sends it: reasoning too where the chat keeps it
            history = session.history(builder=builder)
        built = builder.build(history, n_ctx=n_ctx, reserve=reserve, state=state)
        lore_active = list(getattr(builder.dynamic, "active", None) or [])  # before lint builds a sample prompt
        note_due = bool(getattr(builder.dynamic, "note_due", False))
        built.notes += [w for w in _lint_warnings(builder, tokenizer) if w not in built.notes]  # said once
    finally:
        if vocab is not None:
            vocab.close()
    if not args.json:
        for note in built.notes:
            print(f"warning: {note}", file=sys.stderr)
    if args.json:
        out = built.as_json()
        out["format_reason"] = choice.why
        out["model"] = str(path) if path is not None else None
        out["chat"] = session.chat_id if session is not None else None
        out["lore"] = lore_report(lore_active)
        out["author_note"] = _note_report(recipe.note, note_due, built)
        if not args.token_ids:
            out.pop("token_ids")
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(built.text)
        if sys.stdout.isatty():
            sys.stdout.write("\n")
    return 0


def _history_character(ws: Any, name: str, char: str | None) -> tuple[str, str | None]:
    """(--card, --char) for a SillyTavern file's character, as `chats import` then opening it would give:
    the card of that name when there is one, else no card and the file's name for the character."""
    wanted = name.lower()
    match = next((e for e in ws.characters() if e.name.lower() == wanted), None)
    if match is not None:
        return match.ref, char
    return "none", char or name


def _note_report(note: Any, due: bool, built: Any) -> dict[str, Any] | None:
    """The Author's Note in `cattery prompt --json`: its settings, and where it went this time."""
    if note is None:
        return None
    where = next((i for i in built.insertions if "author_note" in i.kinds), None)
    return {
        **note.to_dict(),
        "inserted": where is not None,
        "due": due,
        "before_message": where.before if where is not None else None,
        "segment": where.segment if where is not None else None,
        "folded_into": where.folded_into if where is not None else None,
    }


def _chat_id(ws: Any, ref: str) -> int:
    # ASCII digits only ("²" is a digit to str.isdigit, not to int) and short enough for SQLite's integers.
    if not (ref.isascii() and ref.isdigit() and len(ref) <= 18) or not ws.store.has_chat(int(ref)):
        raise CatteryError(f"{ref}: no chat with that id (`cattery chats list`)")
    return int(ref)


def cmd_chats_list(args: argparse.Namespace) -> int:
    import time

    from app.units import fmt_size

    ws = open_workspace()
    card_ref = ws.resolve_character(args.card)[0] if args.card else None
    rows = ws.store.list_chats(card_ref)
    kept = ws.snapshots.sizes()  # chat id → bytes of its KV snapshot on disk
    if args.json:
        out = [
            {
                "id": r.id,
                "title": r.title,
                "character": r.card_name,
                "card": r.card_ref,
                "messages": r.messages,
                "updated": r.updated_at,
                "last_message": r.last_message,
                "snapshot_bytes": kept.get(r.id, 0),
            }
            for r in rows
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no chats yet", file=sys.stderr)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated_at))
        last = " ".join(r.last_message.split())[:60]
        count = f"{r.messages} message" + ("" if r.messages == 1 else "s")
        if r.id in kept:
            count += f", snapshot {fmt_size(kept[r.id])}"
        print(f"{r.id}  {when}  {r.card_name or '-'}  {r.title}  ({count})  {last}")
    return 0


def cmd_chats_export(args: argparse.Namespace) -> int:
    from app.chats.transfer import export_markdown, export_st_chat

    ws = open_workspace()
    chat_id = _chat_id(ws, args.chat)
    out = Path(args.output).expanduser()
    to = args.to or ("md" if out.suffix.lower() in (".md", ".markdown") else "jsonl")
    try:
        (export_markdown if to == "md" else export_st_chat)(ws.store, chat_id, out)
    except OSError as exc:
        raise CatteryError(f"{out}: cannot write: {exc.strerror}") from None
    print(f"wrote {out}")
    return 0


def cmd_chats_import(args: argparse.Namespace) -> int:
    from app.chats.transfer import import_st_chat

    ws = open_workspace()
    card_ref = ws.resolve_character(args.card)[0] if args.card else None
    failed = 0
    for file in args.files:
        try:
            chat_id = import_st_chat(ws.store, Path(file), card_ref)
        except CatteryError as exc:
            print(f"cattery: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if card_ref is None:  # the character of that name, when there is one
            name = (ws.store.chat(chat_id)["card_name"] or "").lower()
            match = next((e for e in ws.characters() if name and e.name.lower() == name), None)
            if match is not None:
                ws.store.set_card_ref(chat_id, match.ref)
        print(f"imported {file} as chat {chat_id}")
    return 2 if failed else 0


def cmd_chats_rm(args: argparse.Namespace) -> int:
    from app.instance import refuse_if_in_use

    ws = open_workspace()
    chat_id = _chat_id(ws, args.chat)
    refuse_if_in_use(ws.paths.data_dir, ws.store, chat_id, "delete")  # the app would write into a chat that is gone
    title = ws.store.chat(chat_id)["title"]
    ws.delete_chat(chat_id)
    print(f"deleted chat {chat_id} ({title})")
    return 0


def cmd_chats_rename(args: argparse.Namespace) -> int:
    """A title of the person's own: never replaced by the automatic one (app/chats/titles.py)."""
    from app.chats.titles import clean_title

    ws = open_workspace()
    chat_id = _chat_id(ws, args.chat)
    title = clean_title(args.title)
    old = ws.store.chat(chat_id)["title"]
    ws.store.rename_chat(chat_id, title)  # the running app shows it within a few seconds
    print(f"renamed chat {chat_id}: {old} → {title}")
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    from app.paths import get_paths

    items = {k: str(v) for k, v in get_paths().as_dict().items()}
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        width = max(len(k) for k in items)
        for key, value in items.items():
            print(f"{key:<{width}}  {value}")
    return 0


# -- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cattery",
        description="Chat with quantized LLMs on your own machine, through llama.cpp.",
    )
    parser.add_argument("--version", action="version", version=f"cattery {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser(
        "chat",
        help="chat with a model (the default command)",
        description="Chat with a model. In a terminal this opens the full-screen app on the last chat "
        "(with --card, that character's last chat); without one, or with --plain, the chat is line based.",
    )
    _add_model_options(chat)
    _add_sampler_options(chat)
    _add_prompt_options(chat)
    chat.add_argument(
        "--plain", action="store_true", help="line-based chat on stdin/stdout (the default without a terminal)"
    )
    chat.add_argument("--tui", action="store_true", help="the full-screen app (the default in a terminal)")
    chat.add_argument(
        "--hide-thinking",
        action="store_true",
        help="a thinking model's reasoning is not shown (by default the line chat writes it to stderr)",
    )
    chat.add_argument(
        "--no-thinking",
        action="store_true",
        help="open each reply with an empty reasoning block (where the format has one)",
    )
    chat.add_argument("--keep-reasoning", action="store_true", help="later prompts carry each reply's reasoning too")
    chat.add_argument(
        "--thinking-budget", type=int, metavar="N", help="tokens of thinking before the block is closed for the model"
    )
    chat.add_argument("--new", action="store_true", help="start a new chat instead of continuing the last one")
    chat.add_argument("--chat", metavar="ID", help="continue this saved chat (`cattery chats list`)")
    _add_engine_options(chat)
    chat.set_defaults(func=cmd_chat, loads_llama=True)

    formats = sub.add_parser("formats", help="list, import and check prompt formats")
    formats.add_argument("--json", action="store_true")
    formats.set_defaults(func=cmd_formats)
    fsub = formats.add_subparsers(dest="formats_command", metavar="SUBCOMMAND")
    fimport = fsub.add_parser("import", help="turn a SillyTavern instruct preset (JSON) into a format file")
    fimport.add_argument("file", metavar="FILE")
    fimport.add_argument("--name", help="the new format's name (default: the preset's)")
    fimport.set_defaults(func=cmd_formats_import)
    flint = fsub.add_parser("lint", help="check a format against a model's tokenizer")
    flint.add_argument("format_name", metavar="F", nargs="?", help="a format (default: the one a chat would use)")
    flint.add_argument(
        "-m", "--model", metavar="M", help="a .gguf path or library name (default: the one a chat would use)"
    )
    _add_engine_options(flint)
    flint.set_defaults(func=cmd_formats_lint, loads_llama=True)

    prompt = sub.add_parser(
        "prompt",
        help="print exactly the prompt that would be sent",
        description="Print exactly the prompt that would be sent. The model is --model, else the one a chat "
        "would use (default, last used, bundled), with its own template, the window applied and token counts "
        "in --json; with --format and no --model, the text alone (no model, no token counts).",
    )
    prompt.add_argument("-m", "--model", metavar="M", help="a .gguf path or library name (for its template and tokens)")
    _add_prompt_options(prompt)
    prompt.add_argument(
        "--history",
        metavar="FILE",
        help='a JSON list of {"role": "system"|"user"|"assistant", "content": …, "name"?: …}, '
        "or a SillyTavern chat file (JSONL, as `cattery chats export` writes)",
    )
    prompt.add_argument(
        "--chat", metavar="ID", help="a saved chat (`cattery chats list`): the prompt its next reply would send"
    )
    prompt.add_argument("--ctx", type=int, metavar="N", help="context size (default: as the chat would use)")
    prompt.add_argument("--reserve", type=int, metavar="N", help="tokens kept free for the reply (default max_tokens)")
    prompt.add_argument("--json", action="store_true", help="text, token counts, and which messages were kept")
    prompt.add_argument("--token-ids", action="store_true", help="with --json: include the token ids")
    prompt.set_defaults(func=cmd_prompt, loads_llama=True)

    cards = sub.add_parser("cards", help="the character library")
    csub = cards.add_subparsers(dest="cards_command", metavar="SUBCOMMAND", required=True)
    cimport = csub.add_parser("import", help="add cards (PNG, JSON, CharX, YAML) to the library")
    cimport.add_argument("files", metavar="FILE", nargs="+")
    cimport.set_defaults(func=cmd_cards_import)
    clist = csub.add_parser("list", help="the cards in the library")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(func=cmd_cards_list)
    cshow = csub.add_parser("show", help="a card's fields")
    cshow.add_argument("card", metavar="NAME|FILE")
    cshow.add_argument("--json", action="store_true", help="the card as V3 JSON")
    cshow.set_defaults(func=cmd_cards_show)
    cexport = csub.add_parser("export", help="write a card as PNG (V2 + V3 chunks), JSON (V3) or CharX")
    cexport.add_argument("card", metavar="NAME")
    cexport.add_argument("--to", choices=["png", "json", "charx"], required=True)
    cexport.add_argument("-o", "--output", metavar="PATH", required=True)
    cexport.set_defaults(func=cmd_cards_export)
    crm = csub.add_parser("rm", help="remove a card from the library")
    crm.add_argument("card", metavar="NAME")
    crm.set_defaults(func=cmd_cards_rm)

    chats = sub.add_parser("chats", help="the saved chats: list, rename, export, import SillyTavern chat files, remove")
    chsub = chats.add_subparsers(dest="chats_command", metavar="SUBCOMMAND", required=True)
    chlist = chsub.add_parser("list", help="every chat, the most recent first")
    chlist.add_argument("--card", metavar="C", help="only the chats with this character")
    chlist.add_argument("--json", action="store_true")
    chlist.set_defaults(func=cmd_chats_list)
    chexport = chsub.add_parser("export", help="write a chat as a SillyTavern chat file (JSONL) or Markdown")
    chexport.add_argument("chat", metavar="ID")
    chexport.add_argument("--to", choices=["jsonl", "md"], help="default: from the file's extension")
    chexport.add_argument("-o", "--output", metavar="PATH", required=True)
    chexport.set_defaults(func=cmd_chats_export)
    chimport = chsub.add_parser("import", help="add SillyTavern chat files (JSONL) as chats")
    chimport.add_argument("files", metavar="FILE", nargs="+")
    chimport.add_argument("--card", metavar="C", help="the character they belong to (default: by name)")
    chimport.set_defaults(func=cmd_chats_import)
    chrm = chsub.add_parser("rm", help="delete a chat")
    chrm.add_argument("chat", metavar="ID")
    chrm.set_defaults(func=cmd_chats_rm)
    chrename = chsub.add_parser("rename", help="give a chat a title of your own")
    chrename.add_argument("chat", metavar="ID")
    chrename.add_argument("title", metavar="TITLE")
    chrename.set_defaults(func=cmd_chats_rename)

    paths = sub.add_parser("paths", help="where Cattery keeps settings, models, chats and logs")
    paths.add_argument("--json", action="store_true")
    paths.set_defaults(func=cmd_paths)

    from app import (
        cli_build,
        cli_convert,
        cli_engines,
        cli_eval,
        cli_lore,
        cli_merge,
        cli_models,
        cli_presets,
        cli_quantize,
    )

    cli_lore.add_parser(sub)
    cli_engines.add_parser(sub)
    cli_presets.add_parser(sub)
    cli_models.add_parser(sub)
    cli_convert.add_parser(sub)
    cli_quantize.add_parser(sub)
    cli_eval.add_parser(sub)
    cli_merge.add_parser(sub)
    cli_build.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["chat", *argv]
    from app.terminal import VisibleStream

    streams = sys.stdout, sys.stderr
    # Everything a command prints may hold text from outside (names, chat text, replies):
    # its control characters are shown, never obeyed. The full-screen app owns the
    # terminal itself (app/tui/run.py).
    sys.stdout, sys.stderr = VisibleStream(sys.stdout), VisibleStream(sys.stderr)
    try:
        args = parser.parse_args(argv)
        return _run(args)
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    """The command, with every way it can fail turned into one line on stderr and a non-zero exit."""
    from app.crash import debugging, report_crash
    from app.errors import disk_error

    if getattr(args, "loads_llama", False):
        # Before the command imports anything with native libraries of its own (issue 16).
        from app.engine.libraries import load_llama_first

        load_llama_first()
    try:
        return int(args.func(args) or 0)
    except CatteryError as exc:
        print(f"cattery: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("cattery: error: out of memory (the input is too large for this machine)", file=sys.stderr)
        return 2
    except OSError as exc:
        # A full disk, a read-only or missing folder: the environment, not a bug.
        print(f"cattery: error: {_one_line(str(disk_error(exc)))}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A bug. Tests (CATTERY_DEBUG=1) see the real exception; a user sees one line
        # and where the whole story was written.
        if debugging():
            raise
        print(f"cattery: internal error: {report_crash(exc)}", file=sys.stderr)
        return 70


MAX_ERROR_CHARS = 600  # an error quoting a hostile name stays one readable line


def _one_line(text: str) -> str:
    line = " ".join(text.split("\n")).strip()
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


if __name__ == "__main__":
    raise SystemExit(main())
