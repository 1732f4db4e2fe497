"""Issue 20: a reply's reasoning block parsed apart from its answer as the reply streams, whatever
way the stream cuts the markers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.prompt.reasoning import (
    EMPTY_THINK,
    ReasoningMarkers,
    ReasoningSplitter,
    split_reply,
    template_markers,
    with_reasoning,
)

THINK = ReasoningMarkers("<think>", "</think>")
R1 = ReasoningMarkers("<think>", "</think>", opened=True)


def stream(text: str, cuts: list[int], markers: ReasoningMarkers = THINK, **kw: bool) -> tuple[str, str, bool]:
    s = ReasoningSplitter(markers, **kw)
    reasoning = answer = ""
    last = 0
    for cut in [*sorted(set(cuts)), len(text)]:
        for kind, part in [*s.feed(text[last:cut])]:
            if kind == "reasoning":
                reasoning += part
            else:
                answer += part
        last = cut
    for kind, part in s.end():
        if kind == "reasoning":
            reasoning += part
        else:
            answer += part
    assert (reasoning, answer) == (s.reasoning, s.answer)
    return reasoning, answer, s.closed


def test_a_block_at_the_start_is_reasoning_and_the_rest_the_answer() -> None:
    assert stream("<think>\nLet me see.\n</think>\n\nParis.", []) == ("\nLet me see.\n", "Paris.", True)
    assert stream("  \n<think>x</think>y", []) == ("x", "y", True)  # whitespace before the block
    assert stream("Paris. <think>no</think>", []) == ("", "Paris. <think>no</think>", False)  # not at the start
    assert stream("<thinking>?", []) == ("", "<thinking>?", False)  # another word that starts alike
    assert stream("<thi", []) == ("", "<thi", False)  # a marker never finished is text
    assert stream("<think>cut while thinking", []) == ("cut while thinking", "", False)
    assert stream("<think>cut at </thi", []) == ("cut at </thi", "", False)


def test_a_template_that_opens_the_block_starts_the_reply_inside_it() -> None:
    assert stream("Hmm, 2+2.\n</think>\n4", [], R1) == ("Hmm, 2+2.\n", "4", True)
    assert stream("more thought</think>done", [3, 9], inside=True) == ("more thought", "done", True)


@settings(max_examples=300, deadline=None)
@given(
    reasoning=st.text(alphabet="ab<>/thinkg \n", max_size=30),
    answer=st.text(alphabet="ab<>/thinkg \n", max_size=30),
    lead=st.sampled_from(["", " ", "\n\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=12),
)
def test_any_cut_of_the_stream_splits_as_the_whole_reply_does(
    reasoning: str, answer: str, lead: str, cuts: list[int]
) -> None:
    """Markers split across pieces anywhere (one character per piece included) give the same split
    as the whole text parsed at once."""
    text = f"{lead}<think>{reasoning}</think>{answer}"
    cuts = [c for c in cuts if c <= len(text)]
    whole = stream(text, [])
    assert stream(text, cuts) == whole
    assert stream(text, list(range(len(text)))) == whole
    if "</think>" not in reasoning:
        assert whole[0] == reasoning and whole[2] is True
        assert whole[1] == answer.lstrip()


def test_split_reply_and_what_a_chat_that_keeps_reasoning_sends() -> None:
    split = split_reply("<think>\n step one \n</think>\n\nThe answer.", THINK)
    assert (split.reasoning, split.answer, split.closed, split.open) == ("step one", "The answer.", True, False)
    assert split_reply("<think>still going", THINK).open
    assert split_reply("plain", None) == split_reply("plain", THINK)
    assert with_reasoning(THINK, "step one", "The answer.") == "<think>\nstep one\n</think>\n\nThe answer."
    assert with_reasoning(THINK, "", "The answer.") == "The answer."


def test_markers_are_found_in_a_thinking_models_template() -> None:
    qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    found = template_markers(qwen3)
    assert found is not None and (found.start, found.end, found.skip) == ("<think>", "</think>", EMPTY_THINK)
    assert template_markers("{{ messages }}") is None
    assert template_markers(None) is None
