"""Hostile chat templates (issue 13): a GGUF's `tokenizer.chat_template` is code from a stranger.

Every case runs in a forked child under the issue's bounds (tests/hostile/bounds.py) and must be
accepted, or refused with one line that names the model file. The render's own deadline
is 1.5 s; the children are given 3 s so that a loaded machine does not make the tests
flaky (bench/hostile.py measures the real times against the 2 s bound).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.prompt.chat_template import (
    Budget,
    TemplateRenderError,
    TemplateUnsafeError,
    render_chat_template,
)
from app.prompt.jinja_limits import LimitExceeded
from app.prompt.segments import Message, render_template
from tests.conftest import DEADLINE, FIXTURES, run_cattery
from tests.hostile.bounds import assert_bounded, assert_one_line_failure, assert_refused, run_bounded
from tests.hostile.cases_templates import DAG, MESSAGES, MODEL, WORST_CASES, deep_tuple, render

CHATML = (FIXTURES / "chatml.jinja").read_text(encoding="utf-8")  # an honest template

SECONDS = 3.0
DEEP = deep_tuple(1000)  # deep enough for the depth check, quick to make on a loaded machine
OUR_ERRORS = {"TemplateRenderError", "TemplateUnsafeError"}
HYPOTHESIS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def refused(template: str, match: str) -> str:
    out = assert_refused(render, template, match=match, seconds=SECONDS, what=template[:80])
    assert out.error_type in OUR_ERRORS, out
    assert out.detail.startswith(f"{MODEL}: the chat template "), out.detail
    return out.detail


# -- the cases of the issue ------------------------------------------------------------------------

ISSUE_CASES = [
    ("nested range loops", "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "1.5 s"),
    ("10**(10**10)", "{{ 10**(10**10) }}", "8192 bits"),
    ("lipsum(10**6)", "{{ lipsum(10**6) }}", "lipsum"),
    ("'a'.center(10**9)", "{{ 'a'.center(10**9) }}", "characters"),
    ("tojson(indent=10**9)", "{{ messages|tojson(indent=10**9) }}", "characters"),
    ("1/0", "{{ 1/0 }}", "failed: division by zero"),
    ("include", "{% include 'x.jinja' %}", "{% include %}"),
    ("import", "{% import 'x.jinja' as x %}", "{% import %}"),
    ("from-import", "{% from 'x.jinja' import y %}", "{% import %}"),
    ("extends", "{% extends '../../etc/passwd' %}", "{% extends %}"),
    ("recursive macro", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
    ("range(10**9)", "{% for i in range(10**9) %}{% endfor %}", "range of more than"),
    ("cycler|tojson", "{{ cycler(1, 2)|tojson }}", "not JSON serializable"),
    ("format_map", "{{ '{x}'.format_map(5) }}", "not subscriptable"),
    ("wordwrap(0)", "{{ 'some words'|wordwrap(0) }}", "invalid width"),
]


@pytest.mark.parametrize(("name", "template", "match"), ISSUE_CASES, ids=[c[0] for c in ISSUE_CASES])
def test_the_issues_templates_are_refused_in_one_line(name: str, template: str, match: str) -> None:
    refused(template, match)


# -- the other cases of the same classes -------------------------------------------------------------

MORE_CASES = [
    # C-level operations sized before they run
    ("str * n", "{{ 'a' * 10**9 }}", "characters"),
    ("n * str", "{{ 10**9 * 'a' }}", "characters"),
    ("list * n", "{{ [1] * 10**9 }}", "items"),
    ("int * int", "{% set x = 2**8000 %}{{ x * x }}", "bits"),
    (
        "str + str doubling",
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "characters",
    ),
    ("printf width", "{{ '%1000000000d' % 1 }}", "characters"),
    ("printf precision", "{{ '%.999999999f' % 1.5 }}", "characters"),
    ("printf *width", "{{ '%*s' % (10**9, 'x') }}", "characters"),
    ("printf by name, repeated", "{% set s = 'x' * 1000000 %}{{ ('%(a)s' * 100) % {'a': s} }}", "characters"),
    ("format filter width", "{{ '%1000000000s'|format('x') }}", "characters"),
    ("str.format width", "{{ '{:>1000000000}'.format(1) }}", "characters"),
    ("str.format nested width", "{{ '{:{}}'.format(1, 10**9) }}", "characters"),
    (
        "str.format !r repeated",
        "{% set s = 'x' * 1000000 %}{{ '{0!r}{0!r}{0!r}{0!r}{0!r}'.format([s] * 4) }}",
        "characters",
    ),
    ("zfill", "{{ '1'.zfill(10**9) }}", "characters"),
    ("Markup's own center", "{{ ('x'|safe).center(10**9) }}", "characters"),
    ("Markup's own replace", "{{ ('a' * 1000000)|safe|replace('a', '<' * 10) }}", "characters"),
    ("bytes % width", "{{ '%1000000000d'.encode() % 1 }}", "characters"),
    ("bytes center", "{{ 'x'.encode().center(10**9) }}", "characters"),
    ("ljust", "{{ 'x'.ljust(10**9) }}", "characters"),
    ("expandtabs", "{{ ('\\t' * 100000).expandtabs(10**6) }}", "characters"),
    ("replace", "{{ ('a' * 1000000).replace('a', 'b' * 1000) }}", "characters"),
    ("replace empty", "{{ ('a' * 100000).replace('', 'b' * 1000) }}", "characters"),
    ("join", "{% set s = 'x' * 1000000 %}{{ ('-' * 1000).join([s] * 100) }}", "characters"),
    ("translate", "{{ ('a' * 1000000).translate({97: 'b' * 1000}) }}", "characters"),
    ("encode", "{{ ('\\u00e9' * 1000000).encode('ascii', 'xmlcharrefreplace') }}", "characters"),
    ("to_bytes", "{{ (1).to_bytes(10**9, 'big') }}", "characters"),
    (
        "an integer doubled by minus",
        "{% set ns = namespace(x=1) %}{% for i in range(20000) %}{% set ns.x = ns.x - (0 - ns.x) %}{% endfor %}",
        "bits",
    ),
    ("int from a long hex text", "{{ ('f' * 100000)|int(base=16) }}", "bits"),
    ("hex literal", "{{ 0x" + "f" * 5000 + " }}", "bits"),
    ("round far", "{{ 5|round(-10**9, 'floor') }}", "digits"),
    # filters that amplify
    ("center filter", "{{ 'x'|center(10**9) }}", "characters"),
    ("indent", "{{ 'a\\nb'|indent(10**9) }}", "characters"),
    ("indent every line", "{{ ('a\\n' * 1000000)|indent(100) }}", "characters"),
    ("wordwrap wrapstring", "{{ ('a ' * 100000)|wordwrap(1, wrapstring='x' * 1000) }}", "characters"),
    ("wordwrap long", "{{ ('a ' * 200000)|wordwrap(10) }}", "more than 200,000"),
    ("batch", "{{ [1]|batch(10**9, 0)|list }}", "items"),
    ("slice", "{{ [1]|slice(10**9)|list }}", "items"),
    ("sum of lists", "{{ ([[1] * 1000] * 1000)|sum(start=[]) }}", "items"),
    ("join filter", "{% set s = 'x' * 1000000 %}{{ ([s] * 1000)|join }}", "characters"),
    ("escape", "{{ ('<' * 3000000)|e }}", "characters"),
    ("title of many words", "{{ ('a ' * 2000000)|title }}", "memory"),
    ("pprint", "{{ (['x' * 100] * 10000)|pprint }}", "pprint"),
    ("tojson of a big list", "{% set s = 'x' * 1000000 %}{{ ([s] * 100)|tojson }}", "characters"),
    ("list of a long text", "{{ ('x' * 3000000)|list|length }}", "items"),
    # printing and joining containers: str() of a list repeats what it holds
    ("print a repeated list", "{% set s = 'x' * 1000000 %}{{ [s] * 1000 }}", "characters"),
    ("~ a repeated list", "{% set s = 'x' * 1000000 %}{{ 'a' ~ ([s] * 1000) }}", "characters"),
    ("string filter", "{% set s = 'x' * 1000000 %}{{ ([s] * 1000)|string }}", "characters"),
    # output written over and over
    ("text in a loop", "{% for i in range(100000) %}" + "x" * 10_000 + "{% endfor %}", "characters"),
    (
        "a macro's text in a loop",
        "{% macro m() %}{% for i in range(100000) %}" + "x" * 10_000 + "{% endfor %}{% endmacro %}{{ m() }}",
        "wrote more than",
    ),
    (
        "a set block in a loop",
        "{% set x %}{% for i in range(100000) %}{{ 'y' * 100000 }}{% endfor %}{% endset %}",
        "wrote more than",
    ),
    (
        "self.block in a loop",
        "{% block b %}{% for i in range(100000) %}{{ 'y' * 100000 }}{% endfor %}{% endblock %}{{ self.b() }}",
        "characters",
    ),
    # time
    (
        "macro 2**40 calls",
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "1.5 s",
    ),
    (
        "cycler in nested loops",
        "{% set c = cycler(1, 2) %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "{{ c.next() }}{% endfor %}{% endfor %}",
        "1.5 s",
    ),
    ("recursive loop forever", "{% for x in [[1]] recursive %}{{ loop([x, x]) }}{% endfor %}", "recursed too deeply"),
    # hashing and comparing
    ("deep tuple hashed as a key", DEEP + "{{ {ns.t: 1} }}", "64 levels"),
    ("deep tuple in a dict", DEEP + "{{ ns.t in {} }}", "64 levels"),
    ("deep tuple looked up", DEEP + "{{ {}[ns.t] }}", "64 levels"),
    ("deep tuple made a dict", DEEP + "{{ dict([(ns.t, 1)]) }}", "64 levels"),
    ("deep tuple unique", DEEP + "{{ [ns.t]|unique|list }}", "64 levels"),
    ("deep tuple loop.changed", DEEP + "{% for i in [1, 2] %}{{ loop.changed(ns.t) }}{% endfor %}", "64 levels"),
    ("deep tuple printed", DEEP + "{{ ns.t }}", "64 levels"),
    ("deep tuple from a filter, unique", DEEP + "{{ [ns.t]|select|unique|list }}", "64 levels"),
    ("deep tuple from a filter, dict", DEEP + "{{ dict([(ns.t, 1)]|select) }}", "64 levels"),
    ("deep tuple from a filter, sorted", DEEP + "{{ [ns.t, ns.t]|select|sort }}", "64 levels"),
    ("2**60-path lists compared", DAG + "{{ ns.a == ns.b }}", "compared"),
    ("2**60-path lists by a test", DAG + "{{ ns.a is eq ns.b }}", "compared"),
    ("2**60-path lists counted", DAG + "{{ [ns.a].count(ns.b) }}", "compared"),
    (
        "long equal strings compared 200,000 times",
        "{% set s = 'x' * 1000000 %}{{ ('x' * 1000000) in [s] * 200000 }}",
        "compared",
    ),
    # memory that grows by steps
    (
        "slices kept",
        "{% set s = 'x' * 3000000 %}{% set ns = namespace(l=[]) %}"
        "{% for i in range(1000) %}{% set ns.l = ns.l + [s[i:]] %}{% endfor %}",
        "MB of memory",
    ),
    (
        "splits kept",
        "{% set ns = namespace(l=[]) %}"
        "{% for i in range(1000) %}{% set ns.l = ns.l + [('ab ' * 100000).split()] %}{% endfor %}",
        "MB of memory",
    ),
    # the template as a whole
    ("does not parse", "{% if %}", "does not parse"),
    ("unclosed", "{% for m in messages %}", "does not parse"),
    ("deep if blocks", "{% if 1 %}" * 300 + "{% endif %}" * 300, "too deeply"),
    ("deep parentheses", "{{ " + "(" * 500 + "1" + ")" * 500 + " }}", "too deeply"),
    ("long operator chain", "{{ 1" + " + 1" * 3000 + " }}", "too deeply"),
    ("too many tokens", "{{ a }}" * 6000, "tokens"),
    ("control characters", "{{ '\x00\x1b[2J' ~ \x00 }}", "does not parse"),
    # what the template raises itself
    ("raise_exception with lines", "{{ raise_exception('a\\nb\\r\\nc' * 1000) }}", "failed: a b c"),
    ("undefined attribute", "{{ foo.bar.baz }}", "undefined"),
    ("type error", "{{ 1 + 'a' }}", "unsupported operand"),
    ("a namespace that is not", "{% set x = 1 %}{% set x.y = 2 %}", "namespace"),
    ("unsafe attribute", "{{ ''.__class__.__mro__ }}", "unsafe"),
    ("strftime_now with a huge format", "{{ strftime_now('%c' * 100000) }}", "strftime_now"),
]


@pytest.mark.parametrize(("name", "template", "match"), MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_other_hostile_templates_are_refused_in_one_line(name: str, template: str, match: str) -> None:
    refused(template, match)


@pytest.mark.parametrize(("name", "case"), WORST_CASES, ids=[c[0] for c in WORST_CASES])
def test_worst_cases_are_refused_within_bounds(name: str, case: Any) -> None:
    out = assert_bounded(case, seconds=SECONDS, what=name)
    assert out.kind == "refused" or "striptags" in name, out
    assert out.kind == "ok" or out.detail.startswith(f"{MODEL}: "), out.detail


def test_honest_large_input_is_accepted() -> None:
    """The caps follow the input: a 5 MB conversation renders through ChatML."""
    big = "cat " * 1_250_000
    messages = [{"role": "user", "content": big}, {"role": "assistant", "content": "Purr."}]
    out = run_bounded(render_chat_template, CHATML, messages, seconds=SECONDS * 2, keep_value=True)
    assert out.kind == "ok", out
    assert (
        out.value
        == f"<|im_start|>user\n{big}<|im_end|>\n<|im_start|>assistant\nPurr.<|im_end|>\n<|im_start|>assistant\n"
    )


# -- honest templates render exactly as before ------------------------------------------------------

# Written for this test in the style of real tool-calling templates: namespaces, macros,
# loop variables, filters with arguments, tests, string methods, formatting, `~`, slicing.
TOOLISH = """\
{%- set ns = namespace(system='', count=0) -%}
{%- macro text(c) -%}
{%- if c is string -%}{{ c }}{%- else -%}{%- for part in c -%}{{ part.text }}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- for m in messages if m.role == 'system' -%}{%- set ns.system = ns.system ~ m.content -%}{%- endfor -%}
{{- bos_token -}}
{%- if ns.system %}<|system|>{{ ns.system | trim }}{{ '\\n' }}{% endif -%}
{%- if tools is defined %}{{ tools | tojson(indent=2) }}{{ '\\n' }}{% endif -%}
{%- for m in messages | rejectattr('role', 'equalto', 'system') -%}
{%- if loop.first and m.role != 'user' %}{{ raise_exception('Conversations start with a user message') }}{% endif -%}
{%- set ns.count = ns.count + 1 -%}
<|{{ m.role }}|>{{ text(m.content) }}{{ ('%s' % eos_token) if m.role == 'assistant' else '' }}
{%- if loop.index is divisibleby 2 %} [{{ loop.index0 }}/{{ loop.length }}]{% endif %}
{%- if m.content is string and '</think>' in m.content %}{{ m.content.split('</think>')[-1].strip()[:20] }}{% endif %}
{% endfor -%}
{%- set roles = messages | map(attribute='role') | unique | list -%}
{{- roles | join(',') ~ '|' ~ (messages | length) ~ '|' ~ '{0}:{1:>3}'.format('n', ns.count) -}}
{{- '|' ~ (ns.count * 2) ~ (2 ** 3) -}}
{%- if add_generation_prompt %}{{ '\\n<|assistant|>' }}{% endif -%}
"""

MISTRAL_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "  Be a cat.  "},
        {"role": "user", "content": "Hello <there> & 'you' \"too\" 猫 😺"},
        {"role": "assistant", "content": "Purr.</think>  Meow!  "},
        {"role": "user", "content": [{"type": "text", "text": "parts"}, {"type": "text", "text": " joined"}]},
    ],
    [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}\n" * 3} for i in range(40)],
]


def _reference(template: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    """How the template rendered before the limits: Jinja's immutable sandbox with HF's helpers."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from app.prompt import chat_template

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = chat_template._tojson
    env.globals["raise_exception"] = chat_template._raise_exception
    env.globals["strftime_now"] = chat_template._strftime_now
    return env.from_string(template).render(messages=messages, **variables)


def _honest_templates(model_path: Path) -> dict[str, str]:
    from app.engine.metadata import read_model_info
    from app.prompt.formats import available_formats
    from converters.gguf_chat_format import chat_template

    templates = {"chatml asset": CHATML, "toolish": TOOLISH, "mistral-like": MISTRAL_LIKE}
    templates["bundled model"] = read_model_info(model_path).chat_template or ""
    for name, fmt in available_formats().items():
        templates[f"format {name}"] = chat_template(fmt)
    return templates


def test_honest_templates_render_byte_for_byte_as_before(model_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"city": {"type": "string"}}}}]
    checked = 0
    for name, template in _honest_templates(model_path).items():
        for messages in CONVERSATIONS:
            for gen in (True, False):
                variables: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": gen}
                if name == "toolish":
                    variables["tools"] = tools
                try:
                    want = _reference(template, messages, **variables)
                except Exception:  # the template refuses this conversation; so must ours
                    with pytest.raises(TemplateRenderError):
                        render_chat_template(template, messages, **variables)
                    continue
                assert render_chat_template(template, messages, **variables) == want, (name, messages)
                checked += 1
    assert checked > 50


# -- how the prompt builder uses it -------------------------------------------------------------------

HISTORY = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "How are you?")]
SPIN = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def test_a_refusing_template_still_gets_the_system_prompt_folded() -> None:
    r = render_template(MISTRAL_LIKE, "Be kind.", HISTORY, bos_token="<s>", eos_token="</s>", model=MODEL)
    assert r.notes and r.turns[0].startswith("[INST] Be kind.\n\nHi")


def test_a_stopped_template_is_not_tried_again_with_other_messages() -> None:
    """A template that spins only when given a system message is stopped, not treated as
    "no system role" and rendered again for every message."""
    template = "{% if messages and messages[0].role == 'system' %}" + SPIN + "{% endif %}" + MISTRAL_LIKE

    def segment() -> object:
        return render_template(template, "Be kind.", HISTORY, bos_token="", eos_token="", model=MODEL)

    out = assert_refused(segment, match="took longer than 1.5 s", seconds=SECONDS)
    assert out.error_type == "TemplateUnsafeError" and out.detail.startswith(f"{MODEL}: ")


def test_the_renders_of_one_prompt_share_one_budget() -> None:
    """Each render stays under the per-render deadline, but rendering message by message
    would take seconds per message: the shared budget refuses it as a whole."""
    slow = "{% for m in messages %}{% for i in range(20000) %}{% endfor %}{% endfor %}" + CHATML
    history = [Message("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(40)]

    def segment() -> object:
        return render_template(slow, None, history, bos_token="", eos_token="", model=MODEL, budget=Budget(0.5))

    out = assert_refused(segment, match="rendering the conversation took longer than", seconds=SECONDS)
    assert "in all" in out.detail


def test_the_builder_names_the_model_file(model_path: Path) -> None:
    from app.engine.metadata import read_model_info
    from app.prompt.builder import PromptBuilder

    info = read_model_info(model_path)
    info.chat_template = "{{ messages[0].content * 10**9 }}"

    def build() -> object:
        return PromptBuilder("gguf", info=info, system="S", post_history="P").build(HISTORY)

    out = assert_refused(build, match="characters", seconds=SECONDS)
    assert out.detail.startswith(f"{model_path.name}: the chat template was stopped"), out.detail


# -- the sandbox itself ----------------------------------------------------------------------------------


def test_a_template_that_is_not_text_is_refused() -> None:
    with pytest.raises(TemplateUnsafeError, match="not text but list"):
        render_chat_template(["{{ x }}"], [], model=MODEL)  # type: ignore[arg-type]


def test_a_line_break_in_the_file_name_stays_on_one_line() -> None:
    with pytest.raises(TemplateRenderError) as err:
        render_chat_template("{{ 1/0 }}", [], model="evil\nname\u2028.gguf")
    assert "\n" not in str(err.value) and "\u2028" not in str(err.value)
    assert str(err.value).startswith("evil\\u000aname\\u2028.gguf: ")


def test_the_sandbox_fails_closed_outside_a_render() -> None:
    from app.prompt.chat_template import _environment

    template = _environment().prepare("{% for m in messages %}{{ m }}{% endfor %}")
    with pytest.raises(LimitExceeded, match="outside a guarded render"):
        template.render(messages=["x"])


def test_renders_in_threads_keep_their_own_limits() -> None:
    """A hostile render on one thread (the TUI's worker) does not stop an honest one on another."""
    results: dict[str, Any] = {}

    def hostile() -> None:
        try:
            render_chat_template(SPIN, [], model=MODEL, budget=Budget(0.3))
        except TemplateUnsafeError as exc:
            results["hostile"] = str(exc)

    def honest() -> None:
        results["honest"] = [render_chat_template(CHATML, MESSAGES) for _ in range(50)][-1]

    threads = [threading.Thread(target=hostile), threading.Thread(target=honest)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE)
    assert "took longer" in results["hostile"]
    assert results["honest"] == _reference(CHATML, MESSAGES, add_generation_prompt=True)


# -- mutation tests (hypothesis) -----------------------------------------------------------------------------

# fmt: off
SNIPPETS = [
    "{{", "}}", "{%", "%}", "{#", "#}", "(", ")", "[", "]", "|", "~", "*", "**", "%", "+", ".", ",", "'", "\"", "\\",
    "\n", "\x00", "\udcff", "😺", " if ", " else ", " for ", " in ", " recursive", "loop", "messages", "range(10**9)",
    "10**10", "* 10**9", "|center(10**9)", "|tojson(indent=10**6)", "|list", "|join", "{% for x in range(99999) %}",
    "{% endfor %}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "{% include 'x' %}", "|batch(10**9, 1)",
    ".ljust(10**9)", "'%99999999d' % 1", ".format_map(1)", "lipsum(999)", "cycler(1)", "namespace(a=1)",
    "{% set ns = namespace(s='x') %}", "raise_exception('x')",
]
# fmt: on


def _mutate(base: str, edits: list[tuple[int, int, str]]) -> str:
    text = base
    for pos, delete, insert in edits:
        at = pos % (len(text) + 1)
        text = text[:at] + insert + text[at + delete :]
    return text


def _assert_ours(out: Any, what: str) -> None:
    assert out.bounded, f"{what!r}: {out}"
    assert out.kind == "ok" or out.error_type in OUR_ERRORS, f"{what!r}: {out}"


edits = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=0, max_value=8),
        st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=6)),
    ),
    min_size=1,
    max_size=6,
)


@HYPOTHESIS
@given(base=st.sampled_from([TOOLISH, MISTRAL_LIKE, "CHATML"]), changes=edits)
def test_mutated_templates_are_accepted_or_refused_in_one_line(base: str, changes: list) -> None:
    template = _mutate(CHATML if base == "CHATML" else base, changes)
    _assert_ours(run_bounded(render, template, seconds=SECONDS), template)


# fmt: off
ATOMS = [
    "1", "0", "-1", "10**9", "10**4", "2.5", "1e308", "'x'", "'ab\\n'", "''", "[1, 2]", "[]", "(1,)", "{'a': 1}",
    "messages", "messages[0]", "messages[0].content", "range(10)", "range(100000)", "none", "true", "bos_token",
    "'%s'", "'{}'", "'{:>9}'", "loop", "cycler(1, 2)", "namespace(a=1)", "lipsum(1)", "dict(a=1)", "x",
    "('x' * 10**6)", "([messages] * 1000)", "(range(100000)|list)", "lipsum(20, max=1000)", "'%(a)s%%'",
]
# fmt: on
# fmt: off
FILTERS = [
    "list", "join", "join(',')", "tojson", "tojson(indent=4)", "string", "length", "upper", "title", "e",
    "center(10**6)", "center(10)", "indent(4)", "wordwrap(5)", "replace('x', 'yy')", "format(1)", "batch(3)",
    "slice(3)", "sum", "sort", "unique", "first", "last", "int", "float", "round(2)", "reverse", "map('string')",
    "select", "dictsort", "items", "pprint", "truncate(5)", "urlencode", "trim", "wordcount", "abs", "default(1)",
]
# fmt: on
OPERATORS = ["*", "**", "+", "-", "/", "//", "%", "~", "==", "<", " in ", " and ", " or "]
# fmt: off
METHODS = [
    ".center(10**6)", ".split()", ".split('x')", ".join(['a', 'b'])", ".replace('', '-')", ".zfill(9)", ".upper()",
    ".format(1, 2)", ".strip()", ".startswith('x')", ".count('x')", ".encode()", ".get('a')", ".items()",
    ".expandtabs(4)", ".splitlines()", ".index(1)",
]
# fmt: on


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth >= 3 or draw(st.booleans()):
        return draw(st.sampled_from(ATOMS))
    kind = draw(st.sampled_from(["op", "filter", "method", "paren", "index"]))
    inner = draw(expressions(depth + 1))
    if kind == "op":
        return f"{inner} {draw(st.sampled_from(OPERATORS))} {draw(expressions(depth + 1))}"
    if kind == "filter":
        return f"({inner})|{draw(st.sampled_from(FILTERS))}"
    if kind == "method":
        return f"({inner}){draw(st.sampled_from(METHODS))}"
    if kind == "index":
        return f"({inner})[{draw(st.sampled_from(['0', '-1', '1:', '::-1', 'x', '(1, 2)']))}]"
    return f"({inner})"


@HYPOTHESIS
@given(
    expr=expressions(),
    shape=st.sampled_from(["{{ EXPR }}", "{% for x in EXPR %}{{ x }}{% endfor %}", "{% set x = EXPR %}{{ x ~ x }}"]),
)
def test_generated_expressions_are_accepted_or_refused_in_one_line(expr: str, shape: str) -> None:
    template = shape.replace("EXPR", expr)
    _assert_ours(run_bounded(render, template, seconds=SECONDS), template)


@HYPOTHESIS
@given(
    template=st.sampled_from([TOOLISH, MISTRAL_LIKE, "CHATML"]),
    messages=st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant", "tool", ""]), "content": st.text(max_size=40)}
        ),
        max_size=6,
    ),
    bos=st.text(max_size=8),
)
def test_any_conversation_through_honest_templates_renders_or_refuses_in_one_line(
    template: str, messages: list[dict[str, str]], bos: str
) -> None:
    source = CHATML if template == "CHATML" else template
    out = run_bounded(render_chat_template, source, messages, bos_token=bos, model=MODEL, seconds=SECONDS)
    _assert_ours(out, json.dumps(messages))
    if template == "CHATML":
        assert out.kind == "ok", out


# -- as a user meets it: `cattery prompt --model` on a hostile GGUF -------------------------------------------


@pytest.fixture(scope="module")
def gguf_fields(model_path: Path) -> list[tuple[str, Any, Any, Any]]:
    """The bundled model's metadata (read once): a hostile copy needs no weights, since
    `cattery prompt` loads only the vocabulary."""
    import gguf

    reader = gguf.GGUFReader(model_path)
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        fields.append((key, field.contents(), main, sub))
    return fields


def _hostile_gguf(fields: list[tuple[str, Any, Any, Any]], path: Path, template: str) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for key, value, main, sub in fields:
        w.add_key_value(key, template if key == "tokenizer.chat_template" else value, main, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{{ messages[0].content / 0 }}", "unsupported operand"),
        (SPIN, "took longer than 1.5 s"),
        ("{% include '../../../../etc/passwd' %}", "{% include %}"),
    ],
    ids=["division", "spin", "include"],
)
def test_cattery_prompt_refuses_a_hostile_template_in_one_line(
    gguf_fields: list, tmp_path: Path, template: str, match: str
) -> None:
    model = _hostile_gguf(gguf_fields, tmp_path / "hostile.gguf", template)
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    home = tmp_path / "home"
    before = _files(tmp_path)
    proc = run_cattery("prompt", "--model", str(model), "--history", str(history), home=home, timeout=120)
    line = assert_one_line_failure(proc, match=match)
    assert line.startswith("cattery: error: hostile.gguf: the chat template"), line
    assert {p for p in _files(tmp_path) - before if home not in p.parents} == set()


def test_striptags_is_linear_on_unclosed_tags() -> None:
    """MarkupSafe 2's regex took quadratic time on this; the sandbox's own striptags does not."""
    out = assert_bounded(render, "{{ ('<' * 3000000 ~ '<a>b')|striptags|length }}", keep_value=True)
    assert out.kind == "ok" and out.value == "1"  # everything up to the one ">" is a tag


def test_a_bounded_template_is_still_bounded_when_accepted() -> None:
    """Honest-looking work near the limits is done, not refused: 100,000 loop steps."""
    out = assert_bounded(render, "{% for i in range(100000) %}{% if i == 99999 %}{{ i }}{% endif %}{% endfor %}")
    assert out.kind == "ok"
