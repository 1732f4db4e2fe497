"""GGUF chat templates render in a sandbox, with the helpers real templates need."""

from __future__ import annotations

import pytest

from app.engine.metadata import read_model_info
from app.prompt.builder import PromptBuilder
from app.prompt.chat_template import TemplateRenderError, render_chat_template
from app.prompt.segments import Message

MISTRAL_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def test_bundled_template_renders_chatml(model_path) -> None:
    info = read_model_info(model_path)
    history = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "How are you?")]
    assert PromptBuilder("gguf", info=info, system="Be kind.").build(history).text == (
        "<|im_start|>system\nBe kind.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_without_system_role_gets_it_folded_into_the_first_message(model_path) -> None:
    info = read_model_info(model_path)
    info.chat_template = MISTRAL_LIKE
    info.bos_token, info.eos_token = "<s>", "</s>"
    built = PromptBuilder("gguf", info=info, system="Be kind.").build([Message("user", "Hi")])
    assert built.text == "<s>[INST] Be kind.\n\nHi [/INST]"


def test_raise_exception_is_a_clear_error() -> None:
    with pytest.raises(TemplateRenderError, match="System role not supported"):
        render_chat_template(MISTRAL_LIKE, [{"role": "system", "content": "x"}])


@pytest.mark.parametrize(
    "evil",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{% for m in messages %}{{ m.update({'content': 'pwned'}) }}{% endfor %}",
        "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    ],
)
def test_sandbox_stops_unsafe_templates(evil: str) -> None:
    with pytest.raises(TemplateRenderError):
        render_chat_template(evil, [{"role": "user", "content": "hi"}])


def test_helpers_real_templates_use() -> None:
    template = (
        "{{ bos_token }}{{ strftime_now('%Y') | length }}|{{ messages | tojson }}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<go>{% endif %}"
    )
    out = render_chat_template(
        template, [{"role": "user", "content": "<猫>"}, {"role": "user", "content": "z"}], bos_token="<s>"
    )
    assert out == '<s>4|[{"role": "user", "content": "<猫>"}, {"role": "user", "content": "z"}]<猫><go>'


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateRenderError, match="line 2"):
        render_chat_template("ok\n{% if %}", [])
