"""The worst chat templates (issue 13), for bench/hostile.py and tests/hostile/test_hostile_templates.py.

Each case renders a hostile `tokenizer.chat_template` through the real code path,
`render_chat_template`, as the prompt builder does for a model file. Each is refused
with a `TemplateRenderError` naming "hostile.gguf", but for `striptags`, which is now
simply rendered. Before the sandbox had limits, each of these hung, took gigabytes, or
crashed the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from app.prompt.chat_template import render_chat_template

MODEL = "hostile.gguf"
MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]


def render(template: str) -> str:
    return render_chat_template(template, MESSAGES, bos_token="<s>", eos_token="</s>", model=MODEL)


def deep_tuple(depth: int) -> str:
    """A tuple nested `depth` deep, made in a loop: Python hashes tuples recursively in C
    with no depth check, so hashing one nested 100,000 deep overflows the C stack."""
    return f"{{% set ns = namespace(t=()) %}}{{% for i in range({depth}) %}}{{% set ns.t = (ns.t,) %}}{{% endfor %}}"


DEEP_TUPLE = deep_tuple(100_000)
# Two lists that are each 2**60 lists of 1 when walked, but 61 objects each: comparing
# them compares every path.
DAG = (
    "{% set ns = namespace(a=[0], b=[0]) %}{% for i in range(60) %}"
    "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
)

TEMPLATES: dict[str, str] = {
    "nested range loops (10**10 steps)": (
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}"
    ),
    "10**(10**10)": "{{ 10**(10**10) }}",
    "lipsum(10**6)": "{{ lipsum(10**6) }}",
    "'a'.center(10**9)": "{{ 'a'.center(10**9) }}",
    "tojson(indent=10**9)": "{{ messages|tojson(indent=10**9) }}",
    "a macro calling itself twice (2**40 calls)": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    ),
    "a string doubled 100 times": (
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "100 KB of text written 100,000 times": "{% for i in range(100000) %}" + "x" * 100_000 + "{% endfor %}",
    "a tuple nested 100,000 deep, hashed": DEEP_TUPLE + "{{ {ns.t: 1} }}",
    "two 2**60-path lists compared": DAG + "{{ ns.a == ns.b }}",
    "1,000 slices of a 3 MB string kept": (
        "{% set s = 'x' * 3000000 %}{% set ns = namespace(l=[]) %}"
        "{% for i in range(1000) %}{% set ns.l = ns.l + [s[i:]] %}{% endfor %}"
    ),
    "round to -10**9 digits": "{{ 5|round(-10**9, 'floor') }}",
    "batch(10**9) with a filler": "{{ [1]|batch(10**9, 0)|list }}",
    "title of 2M words": "{{ ('a ' * 2000000)|title }}",
    "'%1000000000d' % 1": "{{ '%1000000000d' % 1 }}",
    "'{:>1000000000}'.format(1)": "{{ '{:>1000000000}'.format(1) }}",
    "a million tabs expanded to 1000 spaces": "{{ ('\\t' * 1000000).expandtabs(1000) }}",
    "(1).to_bytes(10**9)": "{{ (1).to_bytes(10**9, 'big') }}",
    "a template of 16,000 dense tokens": "{{ a==b<c>d }}" * 1230,
    "striptags of 3M unclosed '<' (quadratic in MarkupSafe 2)": "{{ ('<' * 3000000)|striptags }}",
}


def huge_template() -> str:
    return render("x" * (50 * 1024 * 1024))  # made when run, not when this module is imported


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    *((f"chat template: {name}", partial(render, template)) for name, template in TEMPLATES.items()),
    ("chat template: a 50 MB template", huge_template),
]
