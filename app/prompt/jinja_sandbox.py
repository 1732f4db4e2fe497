"""A Jinja environment for code from strangers: sandboxed, and with limits on what it may spend.

Jinja's `ImmutableSandboxedEnvironment` keeps a template away from Python's internals
and from mutating its inputs, but leaves it free to loop forever, to ask C for a
gigabyte in one operation, or to raise any exception. This environment closes that,
in the places Jinja lets us hook in, so that the honest path stays plain Jinja:

- generated code: every `for` loop iterates through a ticking wrapper, every write
  (to the output or to a macro's or `{% set %}` block's buffer) is counted, `~`
  joins are sized before they run, and comparisons and dict keys with a computed
  operand are sized first (a comparison or a hash can be as costly as its operands);
- the sandbox's hooks: operators (`*`, `**`, `+`, `%`), calls (string methods that
  allocate from a number: `center`, `zfill`, `replace`, `join`, ...), `str.format`,
  item lookups;
- filters and tests, each wrapped: ticked, sized before (`center`, `indent`,
  `wordwrap`, `tojson`, `batch`, `round`, ...) and after;
- globals: `range` and `lipsum` bounded; no loader, and `include`, `import` and
  `extends` refused when the template is prepared.

`optimized=False`: Jinja's optimizer evaluates constant expressions at compile time,
outside any render and its limits. Every wrapper is also `pass_context` so that Jinja
never calls it at compile time either.
"""

from __future__ import annotations

import re
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from functools import update_wrapper
from typing import Any, ClassVar

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, operators
from jinja2.ext import Extension, loopcontrols
from jinja2.runtime import LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum, pass_context
from markupsafe import Markup

from app.prompt.jinja_limits import (
    _CURRENT,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_RANGE,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_TOKENS,
    MIN_TEXT,
    TEXT_PER_INPUT,
    Budget,
    Guard,
    LimitExceeded,
    activate,
    check_operand,
    current,
    deactivate,
    int_bits,
    int_text,
    json_size,
    text_size,
)

LOOP_FILTER = "cattery:loop"  # not a name a template can write: `|cattery:loop` does not parse
SLOW_TEXT = 200_000  # filters written in Python (wordwrap, urlize, pprint) get no more than this
MAX_ROUND_DIGITS = 1000
MAX_LIPSUM = (20, 1000)  # paragraphs, words per paragraph

_SCALARS = (str, int, float, bool, type(None))


class TemplateProblem(Exception):
    """The template cannot be prepared: too big, does not parse, loads other templates."""


# -- iteration -----------------------------------------------------------------------


class LimitedIterator:
    """Iterates `source` with a tick per item (and a count, for what filters produce)."""

    __slots__ = ("_counted", "_source")

    def __init__(self, source: Iterable[Any], counted: bool = False) -> None:
        self._source = source
        self._counted = counted

    def __iter__(self) -> Iterator[Any]:
        guard = current()
        n = 0
        for item in self._source:
            guard.tick()
            if self._counted:
                n += 1
                if n > MAX_ITEMS:
                    guard.items(n)
            yield item


class LimitedSequence(LimitedIterator):
    """A LimitedIterator over something sized, which keeps its `len()`, so that
    `loop.length` and `loop.last` do not make a list of it."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]


def limited_iter(source: Any) -> LimitedIterator:
    return LimitedSequence(source) if isinstance(source, Sized) else LimitedIterator(source)


def checked_result(result: Any, guard: Guard) -> Any:
    """Whatever a call, filter or operator produced, held to the caps."""
    kind = type(result)
    if kind is str or isinstance(result, (str, bytes, bytearray)):
        guard.text(len(result))
    elif kind is int:
        int_bits(result.bit_length())
    elif isinstance(result, (list, tuple, dict, set, frozenset)):
        guard.items(len(result))
    elif isinstance(result, (types.GeneratorType, map, filter)):
        return LimitedIterator(result, counted=True)
    return result


# -- sizes of operations --------------------------------------------------------------

_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.S)


def _number(spec: str | None, positional: list[Any], pos: int, guard: Guard) -> tuple[int, int]:
    """A width or precision of a %-format: digits, or `*` taking the next argument."""
    if spec is None:
        return 0, pos
    if spec == "*":
        value = positional[pos] if pos < len(positional) else 0
        value = value if isinstance(value, int) else 0
        pos += 1
    else:
        if len(spec) > 12:
            raise LimitExceeded(f"it asked for a text of more than {guard.text_cap:,} characters")
        value = int(spec)
    if value > guard.text_cap:
        raise LimitExceeded(f"it asked for a text of more than {guard.text_cap:,} characters")
    return max(value, 0), pos


def printf_size(fmt: str, args: Any, guard: Guard) -> int:
    """An upper bound on len(fmt % args)."""
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping = args if isinstance(args, Mapping) else None
    cap = guard.text_cap
    total = len(fmt)
    pos = 0
    for match in _PRINTF.finditer(fmt):
        key, width_spec, prec_spec, conv = match.groups()
        if conv == "%":
            continue
        width, pos = _number(width_spec, positional, pos, guard)
        prec, pos = _number(prec_spec, positional, pos, guard)
        if key is not None:
            value = mapping.get(key) if mapping is not None else None
        else:
            value = positional[pos] if pos < len(positional) else None
            pos += 1
        if conv in "rsa":
            size = text_size(value, cap, nested=conv != "s")
            size = min(size, prec) if prec_spec else size
        elif isinstance(value, int):
            size = int_text(value)
        else:
            size = 330 + prec  # a float: up to 309 digits before the point
        total += max(width, size)
        if total > cap:
            break
    return total * (6 if isinstance(fmt, Markup) else 1)


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _as_text(value: Any, guard: Guard) -> int:
    n = text_size(value, guard.text_cap)
    guard.text(n)
    return n


_LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def _lines(s: Any) -> int:
    if isinstance(s, str):
        return sum(s.count(c) for c in _LINE_BREAKS) + 1
    if isinstance(s, (bytes, bytearray)):
        return s.count(b"\n") + s.count(b"\r") + 1
    return 1


def _materialise(value: Any, guard: Guard) -> list[Any]:
    items = value if isinstance(value, list) else list(LimitedIterator(value, counted=True))
    guard.items(len(items))
    return items


def _translate_width(table: Any, guard: Guard) -> int:
    if isinstance(table, (bytes, bytearray)):
        return 1
    if isinstance(table, Mapping):
        values: Iterable[Any] = table.values()
    elif isinstance(table, (list, tuple, str)):
        values = table
    else:
        raise LimitExceeded("it called translate with a table that is not a dict or a list")
    guard.items(len(table))
    return max((len(v) if isinstance(v, (str, bytes)) else 1 for v in values), default=1)


_CASE_METHODS = frozenset({"upper", "lower", "title", "swapcase", "casefold", "capitalize"})
_PAD_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_PLAIN_ENCODINGS = ("utf-8", "utf8", "utf-16", "utf16", "utf-32", "utf32", "latin-1", "latin1", "ascii")


def _text_method(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], guard: Guard) -> tuple:
    """Size a str/bytes method before it runs; `join` gets its items materialised once."""
    n = len(owner)
    markup = 6 if isinstance(owner, Markup) else 1
    if name in _PAD_METHODS:
        width = _arg(args, kwargs, 0, "width", 0)
        if isinstance(width, int):
            guard.text(max(n, width))
    elif name == "expandtabs":
        tabsize = _arg(args, kwargs, 0, "tabsize", 8)
        if isinstance(tabsize, int):
            tab = "\t" if isinstance(owner, str) else b"\t"
            guard.text(n + owner.count(tab) * max(tabsize, 0))
    elif name == "replace":
        old, new = _arg(args, kwargs, 0, "old", None), _arg(args, kwargs, 1, "new", None)
        count = _arg(args, kwargs, 2, "count", -1)
        if isinstance(old, (str, bytes)) and isinstance(new, (str, bytes)) and type(old) is type(new):
            hits = owner.count(old) if old else n + 1
            hits = min(hits, count) if isinstance(count, int) and count >= 0 else hits
            guard.text(n + hits * max(len(new) * markup - len(old), 0))
    elif name == "join" and args:
        items = _materialise(args[0], guard)
        size = sum(len(x) for x in items if isinstance(x, (str, bytes, bytearray))) * markup
        guard.text(size + n * max(len(items) - 1, 0))
        args = (items, *args[1:])
    elif name == "translate" and args:
        guard.text(n * _translate_width(args[0], guard))
    elif name == "encode":
        encoding = str(_arg(args, kwargs, 0, "encoding", "utf-8")).lower()
        errors = _arg(args, kwargs, 1, "errors", "strict")
        plain = encoding in _PLAIN_ENCODINGS and errors in ("strict", "ignore", "replace")
        guard.text(n * (4 if plain else 100 if errors == "namereplace" else 10) + 4)
    elif name in ("decode", "hex"):
        guard.text(4 * n + 4)
    elif name in _CASE_METHODS:
        guard.text(3 * n)
    elif name in ("split", "rsplit"):
        sep = _arg(args, kwargs, 0, "sep", None)
        maxsplit = _arg(args, kwargs, 1, "maxsplit", -1)
        pieces = owner.count(sep) + 1 if isinstance(sep, (str, bytes)) and sep else n // 2 + 1
        pieces = min(pieces, maxsplit + 1) if isinstance(maxsplit, int) and maxsplit >= 0 else pieces
        if isinstance(sep, (str, bytes)) and sep:
            guard.items(pieces)
        guard.reserve(pieces * 64)
    elif name == "splitlines":
        pieces = _lines(owner)
        guard.items(pieces)
        guard.reserve(pieces * 64)
    return args, kwargs


def _listed(value: Any, guard: Guard) -> Any:
    """An iterator (a filter's lazy result) as a list, so that what it yields can be sized
    before something hashes or compares it; anything else as it is."""
    return _materialise(value, guard) if isinstance(value, (LimitedIterator, Iterator)) else value


def check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any], guard: Guard) -> tuple:
    """Size what a call would make before it is made."""
    if isinstance(obj, Macro):  # template code: its own loops and writes are guarded
        return args, kwargs
    if isinstance(obj, LoopContext):  # `loop(children)` in a recursive loop
        return tuple(limited_iter(a) for a in args), kwargs
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if obj is dict or obj is Namespace or name == "fromkeys":
        # dict(...), namespace(...), {}.fromkeys(...) hash what the iterable yields.
        args = tuple(_listed(a, guard) for a in args)
    for value in args:
        check_operand(value)
    for key, value in kwargs.items():
        if key not in ("_loop_vars", "_block_vars"):
            check_operand(value)
    if isinstance(owner, (str, bytes, bytearray)):  # str's own methods, and Markup's in Python
        return _text_method(owner, name, args, kwargs, guard)
    if not isinstance(obj, types.BuiltinMethodType) or owner is None:
        return args, kwargs
    if name in ("index", "count") and isinstance(owner, (list, tuple)):  # compares with every item
        check_operand(owner)
    if name == "to_bytes" and isinstance(owner, int):
        length = _arg(args, kwargs, 0, "length", 1)
        if isinstance(length, int):
            guard.text(length)
    elif name == "from_bytes" and args and isinstance(args[0], (bytes, bytearray)):
        int_bits(8 * len(args[0]))
    return args, kwargs


def check_binop(operator: str, left: Any, right: Any, guard: Guard) -> None:
    """Size `left <operator> right` before C computes it."""
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            int_bits(left.bit_length() + right.bit_length())
            return
        for seq, times in ((left, right), (right, left)):
            if isinstance(times, int) and isinstance(seq, (str, bytes, bytearray, list, tuple)):
                size = len(seq) * max(times, 0)
                if isinstance(seq, (list, tuple)):
                    guard.items(size)
                else:
                    guard.text(size)
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            int_bits(abs(left).bit_length() * right)
    elif operator == "+":
        if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
            markup = 6 if isinstance(left, Markup) or isinstance(right, Markup) else 1
            guard.text((len(left) + len(right)) * markup)
        elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            guard.items(len(left) + len(right))
    elif operator == "%" and isinstance(left, (str, bytes)):
        fmt = left if isinstance(left, str) else left.decode("latin-1")
        guard.text(printf_size(fmt, right, guard))


# -- str.format ------------------------------------------------------------------------

_SPEC_NUMBER = re.compile(r"\d+")


class _LimitedFormatting:
    """Mixed into Jinja's sandboxed formatters: every field is sized before it is formatted."""

    _made = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._made = len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        guard = current()
        guard.tick()
        numbers = _SPEC_NUMBER.findall(format_spec)
        if any(len(d) > 12 for d in numbers):
            raise LimitExceeded(f"it asked for a text of more than {guard.text_cap:,} characters")
        width = max((int(d) for d in numbers), default=0)
        size = int_text(value) if isinstance(value, int) else text_size(value, guard.text_cap)
        self._made += max(width, size, 330 if isinstance(value, float) else 0)
        guard.text(self._made)
        return super().format_field(value, format_spec)  # type: ignore[misc]

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "a"):
            guard = current()
            guard.text(text_size(value, guard.text_cap, nested=True))
        return super().convert_field(value, conversion)  # type: ignore[misc]


class LimitedFormatter(_LimitedFormatting, SandboxedFormatter):
    pass


class LimitedEscapeFormatter(_LimitedFormatting, SandboxedEscapeFormatter):
    pass


# -- filters and tests -----------------------------------------------------------------

Rule = Callable[[Guard, Any, tuple[Any, ...], dict[str, Any]], tuple[Any, tuple[Any, ...], dict[str, Any]]]


def _text_rule(bytes_per_char: int, slow: bool = False) -> Rule:
    """The filter turns its value into text: the value may not print longer than the cap,
    and what the filter allocates on the way (`bytes_per_char` of the text: a copy, or a
    list of words at ~60 bytes each) must fit in memory."""

    def rule(guard: Guard, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple:
        n = _as_text(value, guard)
        if slow and n > SLOW_TEXT:
            raise LimitExceeded(f"it gave a slow filter more than {SLOW_TEXT:,} characters")
        guard.reserve(n * bytes_per_char)
        return value, args, kwargs

    return rule


def _center(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    width = _arg(args, kwargs, 0, "width", 80)
    n = _as_text(value, guard)
    if isinstance(width, int):
        guard.text(max(n, width))
    return value, args, kwargs


def _indent(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    width = _arg(args, kwargs, 0, "width", 4)
    n = _as_text(value, guard)
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    guard.text(max(step, 0))
    guard.text(n + (_lines(value) if isinstance(value, str) else n + 1) * max(step, 0))
    return value, args, kwargs


def _wordwrap(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    n = _as_text(value, guard)
    if n > SLOW_TEXT:
        raise LimitExceeded(f"it gave wordwrap more than {SLOW_TEXT:,} characters")
    width = _arg(args, kwargs, 0, "width", 79)
    wrap = _arg(args, kwargs, 2, "wrapstring", None)
    if isinstance(width, int) and width > 0:
        breaks = n // width + (_lines(value) if isinstance(value, str) else n) + 1
        guard.text(n + breaks * (len(wrap) if isinstance(wrap, str) else 1))
    return value, args, kwargs


def _replace(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    n = _as_text(value, guard)
    old, new = _arg(args, kwargs, 0, "old", ""), _arg(args, kwargs, 1, "new", "")
    count = _arg(args, kwargs, 2, "count", None)
    new_len = text_size(new, guard.text_cap) * (6 if isinstance(value, Markup) else 1)
    hits = (value.count(old) if old else n + 1) if isinstance(value, str) and isinstance(old, str) else n + 1
    hits = min(hits, count) if isinstance(count, int) and count >= 0 else hits
    guard.text(n + hits * new_len)
    return value, args, kwargs


def _join(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    items = _materialise(value, guard)
    sep = text_size(_arg(args, kwargs, 0, "d", ""), guard.text_cap)
    total = sep * max(len(items) - 1, 0)
    for item in items:
        total += text_size(item, guard.text_cap)
        if total > guard.text_cap:
            break
    guard.text(total)
    return items, args, kwargs


def _format(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    if _as_text(value, guard) and not isinstance(value, str):
        value = str(value)
    if isinstance(value, str):
        guard.text(printf_size(value, kwargs or args, guard))
    return value, args, kwargs


def _tojson(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    indent = _arg(args, kwargs, 1, "indent", None)
    separators = _arg(args, kwargs, 2, "separators", None)
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else -1
    guard.text(max(step, 0))
    if isinstance(separators, (list, tuple)):
        step = max(step, 0) + sum(text_size(s, guard.text_cap) for s in separators)
    guard.text(json_size(value, guard.text_cap, step))
    return value, args, kwargs


def _pprint(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    if text_size(value, SLOW_TEXT, nested=True) > SLOW_TEXT:
        raise LimitExceeded(f"it gave pprint more than {SLOW_TEXT:,} characters")
    return value, args, kwargs


def _count_arg(name: str, i: int) -> Rule:
    def rule(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
        count = _arg(args, kwargs, i, name, 0)
        if isinstance(count, int):
            guard.items(count)
        return value, args, kwargs

    return rule


def _round(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    precision = _arg(args, kwargs, 0, "precision", 0)
    if isinstance(precision, int) and abs(precision) > MAX_ROUND_DIGITS:
        raise LimitExceeded(f"it rounded to more than {MAX_ROUND_DIGITS} digits")
    return value, args, kwargs


def _int(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    if isinstance(value, (str, bytes)) and len(value) > MAX_INT_BITS:
        raise LimitExceeded(f"it made a number of more than {MAX_INT_BITS} bits")
    return value, args, kwargs


def _sum(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    start = _arg(args, kwargs, 1, "start", 0)
    if isinstance(start, (int, float)):
        return value, args, kwargs
    if _arg(args, kwargs, 0, "attribute", None) is not None:
        raise LimitExceeded("it summed attributes onto something that is not a number")
    items = _materialise(value, guard)
    total = len(start) if isinstance(start, Sized) else 0
    work = 0
    for item in items:
        total += len(item) if isinstance(item, Sized) else 0
        work += total
    guard.items(total)
    if work > 16 * MAX_ITEMS:  # each step copies what was summed so far
        raise LimitExceeded(f"it made a list of more than {MAX_ITEMS:,} items")
    return items, args, kwargs


def _list(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    if isinstance(value, Sized):
        guard.items(len(value))
    return value, args, kwargs


def _operand(guard: Guard, value: Any, args: tuple, kwargs: dict) -> tuple:
    """Filters that sort, group or hash what they are given: all of it is sized first."""
    value = _listed(value, guard)
    check_operand(value)
    return value, args, kwargs


_FILTER_RULES: dict[str, Rule] = {
    "string": _text_rule(4),
    "safe": _text_rule(4),
    "trim": _text_rule(4),
    "truncate": _text_rule(4),
    "capitalize": _text_rule(12),
    "lower": _text_rule(12),
    "upper": _text_rule(12),
    "e": _text_rule(24),
    "escape": _text_rule(24),
    "forceescape": _text_rule(24),
    "xmlattr": _text_rule(24),
    "urlencode": _text_rule(48),
    "striptags": _text_rule(40),  # splits into words
    "wordcount": _text_rule(40),  # a list of the words
    "title": _text_rule(140),  # a list of every word and space, then another
    "urlize": _text_rule(140, slow=True),
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "replace": _replace,
    "join": _join,
    "format": _format,
    "tojson": _tojson,
    "pprint": _pprint,
    "batch": _count_arg("linecount", 0),
    "slice": _count_arg("slices", 0),
    "round": _round,
    "int": _int,
    "sum": _sum,
    "list": _list,
    "unique": _operand,
    "sort": _operand,
    "dictsort": _operand,
    "groupby": _operand,
    "min": _operand,
    "max": _operand,
}

_COMPARING_TESTS = frozenset(
    {"in", "==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", ">=", "ge", "<", "lt", "lessthan", "<=", "le"}
)


def _invoke(func: Callable[..., Any], pass_arg: Any, context: Any, value: Any, args: tuple, kwargs: dict) -> Any:
    if pass_arg is _PassArg.context:
        return func(context, value, *args, **kwargs)
    if pass_arg is _PassArg.eval_context:
        return func(context.eval_ctx, value, *args, **kwargs)
    if pass_arg is _PassArg.environment:
        return func(context.environment, value, *args, **kwargs)
    return func(value, *args, **kwargs)


def limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = _PassArg.from_obj(func)
    rule = _FILTER_RULES.get(name)

    def limited(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        guard = current()
        guard.tick()
        for arg in (*args, *kwargs.values()):
            check_operand(arg)
        if rule is not None:
            value, args, kwargs = rule(guard, value, args, kwargs)
        return checked_result(_invoke(func, pass_arg, context, value, args, kwargs), guard)

    return pass_context(update_wrapper(limited, func, assigned=("__name__", "__doc__"), updated=()))


def limited_test(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = _PassArg.from_obj(func)
    comparing = name in _COMPARING_TESTS

    def limited(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        current().tick()
        if comparing:
            check_operand(value)
            for arg in (*args, *kwargs.values()):
                check_operand(arg)
        return _invoke(func, pass_arg, context, value, args, kwargs)

    return pass_context(update_wrapper(limited, func, assigned=("__name__", "__doc__"), updated=()))


def striptags(value: Any) -> str:
    """Jinja's `striptags`, as MarkupSafe 3 does it: by `find`, in one pass.

    MarkupSafe 2 (which Jinja 3.1 still accepts) strips tags with the regex `<.*?>`,
    which takes quadratic time on a text of unclosed `<`: a few MB of them would never
    finish. Same output as MarkupSafe 3 for every input.
    """
    if hasattr(value, "__html__"):
        value = value.__html__()
    text = str(value)
    parts = []
    pos = 0
    while (start := text.find("<", pos)) != -1:
        if text.startswith("<!--", start):
            end = text.find("-->", start + 4)
            if end == -1:
                break
            end += 3
        else:
            end = text.find(">", start)
            if end == -1:
                break
            end += 1
        parts.append(text[pos:start])
        pos = end
    if pos > 0:
        parts.append(text[pos:])
        text = "".join(parts)
    return Markup(" ".join(text.split())).unescape()


# -- globals ----------------------------------------------------------------------------


def bounded_range(*args: Any) -> range:
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise LimitExceeded(f"it asked for a range of more than {MAX_RANGE:,} numbers")
    return numbers


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    paragraphs, words = MAX_LIPSUM
    if not (isinstance(n, int) and isinstance(max, int) and n <= paragraphs and max <= words):
        raise LimitExceeded(f"it asked lipsum for more than {paragraphs} paragraphs of {words} words")
    return generate_lorem_ipsum(n, html, min, max)


# -- code generation -----------------------------------------------------------------------


def _constant(node: nodes.Node) -> bool:
    """A literal scalar, or a literal list of them: compared with it, nothing is costly."""
    if isinstance(node, nodes.Const):
        return type(node.value) in _SCALARS
    if isinstance(node, (nodes.List, nodes.Tuple)):
        return all(isinstance(item, nodes.Const) and type(item.value) in _SCALARS for item in node.items)
    return False


class LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the writes, joins, comparisons and dict keys guarded."""

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.sandbox_write({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        if self._plain_output(frame, finalize):
            self.write("environment.sandbox_output(")
            return
        self.write("environment.sandbox_write(")
        super()._output_child_pre(node, frame, finalize)
        self.write("environment.sandbox_text(")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        if self._plain_output(frame, finalize):
            self.write(")")
            return
        self.write(")")
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    @staticmethod
    def _plain_output(frame: Frame, finalize: Any) -> bool:
        """`{{ x }}` outside autoescape: one call sizes, converts and counts it."""
        return finalize.src is None and not frame.eval_ctx.volatile and not frame.eval_ctx.autoescape

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            markup = "context.eval_ctx.autoescape"
        else:
            markup = "True" if frame.eval_ctx.autoescape else "False"
        self.write("environment.sandbox_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(f"), {markup})")

    def _operand(self, node: nodes.Expr, frame: Frame) -> None:
        if _constant(node):
            self.visit(node, frame)
            return
        self.write("environment.sandbox_operand(")
        self.visit(node, frame)
        self.write(")")

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        self.write("(")
        self._operand(node.expr, frame)
        for op in node.ops:
            self.write(f" {operators[op.op]} ")
            self._operand(op.expr, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("{")
        for idx, item in enumerate(node.items):
            if idx:
                self.write(", ")
            self._operand(item.key, frame)
            self.write(": ")
            self.visit(item.value, frame)
        self.write("}")


# -- the environment ---------------------------------------------------------------------


class GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}`, which templates made for training use (Laguna,
    LFM2.5): Hugging Face's renderer notes where the assistant's own text is and writes what
    is inside unchanged. Here it is the plain block it stands for, so nothing runs for it."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """Hugging Face's chat-template environment (trim_blocks, lstrip_blocks, loop
    controls, the generation tag), with every hook a template can reach held to the guard
    of its render."""

    code_generator_class = LimitedCodeGenerator
    # `-` only for its result: `x - (0 - x)` doubles an integer as surely as `x + x`.
    intercepted_binops = frozenset({"*", "**", "+", "-", "%"})

    def __init__(
        self, *, filters: Mapping[str, Callable[..., Any]] | None = None, globals: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[loopcontrols, GenerationTag],
            keep_trailing_newline=False,
            optimized=False,
            cache_size=0,
            auto_reload=False,
        )
        self.filters["striptags"] = striptags
        self.filters.update(filters or {})
        self.filters = {name: limited_filter(name, f) for name, f in self.filters.items()}
        self.filters[LOOP_FILTER] = pass_context(lambda context, value: limited_iter(value))
        # Tests that compare are sized; the others look at one value and cannot loop.
        self.tests = {name: limited_test(name, f) if name in _COMPARING_TESTS else f for name, f in self.tests.items()}
        self.globals.update(globals or {})
        self.globals.update(range=bounded_range, lipsum=bounded_lipsum)

    # Hooks of the sandbox.

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        # No tick: one operator does not loop, and is sized before it runs.
        guard = current()
        if operator == "+" and type(left) is str and type(right) is str:  # most of what templates do
            guard.text(len(left) + len(right))
            return left + right
        check_binop(operator, left, right, guard)
        return checked_result(self.binop_table[operator](left, right), guard)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        guard = current()
        guard.tick()
        if not __self.is_safe_callable(__obj):
            from jinja2.exceptions import SecurityError

            raise SecurityError(f"{__obj!r} is not safely callable")
        args, kwargs = check_call(__obj, args, kwargs, guard)
        return checked_result(__context.call(__obj, *args, **kwargs), guard)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """The sandbox's own lookup (inlined: it runs for every `message['role']`), with
        a computed key sized before it is hashed."""
        if type(argument) not in _SCALARS and not isinstance(argument, slice):
            check_operand(argument)
        try:
            return obj[argument]
        except (TypeError, LookupError):
            if isinstance(argument, str):
                try:
                    value = getattr(obj, argument)
                except AttributeError:
                    pass
                else:
                    fmt = self.wrap_str_format(value)
                    if fmt is not None:
                        return fmt
                    if self.is_safe_attribute(obj, argument, value):
                        return value
                    return self.unsafe_undefined(obj, argument)
        return self.undefined(obj=obj, name=argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's own wrapper for `str.format`/`format_map`, with the sizing formatter."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        f_self: Any = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type: type[str] = type(f_self)
        is_format_map = value.__name__ == "format_map"
        formatter: SandboxedFormatter
        if isinstance(f_self, Markup):
            formatter = LimitedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = LimitedFormatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return str_type(formatter.vformat(f_self, args, kwargs))

        return update_wrapper(wrapper, value)

    # Called from the generated code.

    def sandbox_write(self, text: str) -> str:
        # No tick: a write does not loop, and whatever repeats writes (a loop, a call) ticks.
        guard = _CURRENT.get()
        if guard is None:
            raise LimitExceeded("it ran outside a guarded render")
        guard.written += len(text)
        if guard.written > guard.write_cap:
            guard.write(0)
        return text

    def sandbox_text(self, value: Any) -> Any:
        if type(value) is not str:
            guard = current()
            guard.text(text_size(value, guard.text_cap))
        return value

    def sandbox_output(self, value: Any) -> str:
        """`str(value)`, sized before it is made, and counted."""
        guard = _CURRENT.get()
        if guard is None:
            raise LimitExceeded("it ran outside a guarded render")
        if type(value) is not str:
            guard.text(text_size(value, guard.text_cap))
            value = str(value)
        guard.written += len(value)
        if guard.written > guard.write_cap:
            guard.write(0)
        return value

    def sandbox_operand(self, value: Any) -> Any:
        return check_operand(value)

    def sandbox_concat(self, parts: tuple[Any, ...], markup: bool) -> str:
        guard = current()
        guard.tick()
        total = 0
        for part in parts:
            total += text_size(part, guard.text_cap) * (6 if markup else 1)
            guard.text(total)
        return markup_join(parts) if markup else str_join(parts)

    # Preparing a template.

    def prepare(self, source: str) -> Any:
        """Parse, check and compile `source`; TemplateProblem or Jinja's syntax error if it cannot be."""
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateProblem(f"it is {len(source):,} characters long, more than {MAX_TEMPLATE_CHARS:,}")
        for count, _ in enumerate(self.lex(source)):
            if count >= MAX_TEMPLATE_TOKENS:
                raise TemplateProblem(f"it has more than {MAX_TEMPLATE_TOKENS:,} tokens")
        tree = self.parse(source)
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            tag = {nodes.Extends: "extends", nodes.Include: "include"}.get(type(node), "import")
            raise TemplateProblem(f"it uses {{% {tag} %}} (line {node.lineno}): a chat template cannot load others")
        for node in tree.find_all(nodes.Const):
            if isinstance(node.value, int) and node.value.bit_length() > MAX_INT_BITS:
                raise TemplateProblem(f"it holds a number of more than {MAX_INT_BITS} bits (line {node.lineno})")
        for node in tree.find_all(nodes.For):
            node.iter = nodes.Filter(node.iter, LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        with warnings.catch_warnings():
            # Python warns about code like `1[0:2]` (a slice of a literal) while compiling;
            # the template's error, if any, comes when it runs, in one line.
            warnings.simplefilter("ignore")
            code = self.compile(tree)
        return self.template_class.from_code(self, code, self.make_globals(None), None)


def render(template: Any, variables: dict[str, Any], *, input_chars: int, budget: Budget | None = None) -> str:
    """Render within the limits: the text, or LimitExceeded / whatever the template raised."""
    guard = Guard(text_cap=max(MIN_TEXT, TEXT_PER_INPUT * input_chars), budget=budget)
    token = activate(guard)
    stream = template.generate(variables)
    try:
        # Every piece was counted as it was written (at most WRITES_PER_TEXT times the cap
        # in all), so joining them is bounded; the result is then held to the cap itself.
        text = "".join(stream)
        guard.text(len(text))
        return text
    finally:
        stream.close()
        deactivate(token)
