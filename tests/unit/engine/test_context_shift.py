"""Context shift: evicted turns leave the KV cache, the rest moves left, only new text is evaluated."""

from __future__ import annotations

from app.engine.engine import Engine
from app.engine.options import SamplerSettings
from app.engine.reuse import plan_reuse

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def seg(engine: Engine, role: str, text: str) -> list[int]:
    return engine.tokenize(f"<|im_start|>{role}\n{text}<|im_end|>\n", add_bos=False)


def test_plan_prefers_prefix_then_finds_the_shifted_run() -> None:
    cached = [1, 2, 3] + [10] * 5 + list(range(100, 140))
    prompt = [1, 2, 3, *range(100, 140), 7, 8]
    plan = plan_reuse(cached, prompt, can_shift=True)
    assert (plan.keep, plan.shift_from, plan.shifted, plan.removed) == (3, 8, 40, 5)
    assert plan.to_evaluate == 2
    assert plan_reuse(cached, prompt, can_shift=False).reused == 3
    # A short coincidental match is not a shift.
    assert plan_reuse([1, 2, 9, 50, 51], [1, 2, 50, 51, 52], can_shift=True).shifted == 0
    # The last prompt token is always evaluated.
    same = list(range(40))
    assert plan_reuse(same, same, can_shift=True).to_evaluate == 1


def test_a_chat_whose_window_slid_is_shifted_not_re_evaluated(engine: Engine) -> None:
    greedy = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=40, ban_eos=True)
    gen_prefix = engine.tokenize("<|im_start|>assistant\n", add_bos=False)
    pinned = engine.tokenize(SYSTEM, add_bos=False)
    turns = [
        seg(engine, "user", "My cat is called Biscuit and she likes to sleep on the piano."),
        seg(engine, "assistant", "Biscuit sounds lovely! Cats often choose warm, high places to rest."),
        seg(engine, "user", "What food should I give a cat that is eleven years old?"),
        seg(engine, "assistant", "Senior cats do well on food rich in protein, with plenty of water."),
        seg(engine, "user", "Write a short poem about an old cat watching the rain."),
    ]
    first = [t for part in [pinned, *turns] for t in part] + gen_prefix
    engine.reset()
    engine.generate(first, greedy).result()

    # The window slides: the first exchange is evicted, a new one is added.
    reply = seg(engine, "assistant", "Grey whiskers by the window, she counts the drops of rain.")
    new_user = seg(engine, "user", "Now tell me three facts about cats and water.")
    second = [t for part in [pinned, *turns[2:], reply, new_user] for t in part] + gen_prefix
    plan = engine.plan(second)
    evicted = len(turns[0]) + len(turns[1])
    kept = len(turns[2]) + len(turns[3]) + len(turns[4])
    assert plan.removed == evicted
    assert plan.reused >= len(pinned) + kept
    gen = engine.generate(second, greedy)
    assert gen.result()
    s = gen.stats
    assert s.shift_removed == evicted
    assert s.prompt_shifted > 0 and s.prompt_reused == plan.reused
    # Only the new exchange is evaluated (its first tokens may match what was cached).
    assert s.prompt_evaluated <= len(reply) + len(new_user) + len(gen_prefix)
    assert s.prompt_evaluated == plan.to_evaluate
    from app.engine.native import L

    cache = engine.cached_tokens()
    assert cache[: len(second)] == second
    # Positions are contiguous again after the shift.
    assert engine._run(lambda m: L.llama_memory_seq_pos_max(m.memory, 0)) == len(cache) - 1


def test_the_shift_itself_is_exact(f32_engine: Engine) -> None:
    """Moving cached entries to new positions changes nothing the model computes.

    A block evaluated at positions shifted right by `gap`, then shifted back by the
    engine's `shift_kv`, must continue exactly as a fresh evaluation at the final
    positions. (In a real eviction the kept turns were also computed while attending
    to the evicted ones, which no shift can undo; that part is an approximation every
    context shift makes.) F32 weights, because a Q4 model's 8-bit activations turn
    float-level differences into visible ones.
    """
    from app.engine.native import L

    eng = f32_engine
    pinned = eng.tokenize(SYSTEM, add_bos=False)
    rest = (
        seg(eng, "user", "What food should I give a cat that is eleven years old?")
        + seg(eng, "assistant", "Senior cats do well on food rich in protein, with plenty of water.")
        + seg(eng, "user", "List the days of the week.")
        + eng.tokenize("<|im_start|>assistant\n", add_bos=False)
    )
    gap = 43

    def greedy_tokens(m, n: int = 32) -> list[int]:
        out = []
        for _ in range(n):
            token = L.llama_sampler_sample(m_greedy[0], m.ctx, -1)
            out.append(token)
            m.decode_one(token)
        return out

    def fresh(m) -> list[int]:
        m.clear_kv()
        m.decode(pinned)
        m.decode(rest)
        return greedy_tokens(m)

    def shifted(m) -> list[int]:
        m.clear_kv()
        m.decode(pinned)
        L.llama_memory_seq_add(m.memory, 0, 0, -1, gap)  # leave room for `gap` evicted tokens
        m.kv_tokens[:0] = [-1] * gap
        assert m.decode(rest) == 0
        m.shift_kv(0, gap)
        assert m.kv_tokens == pinned + rest
        return greedy_tokens(m)

    m_greedy = [eng._run(lambda m: L.llama_sampler_init_greedy())]
    try:
        assert eng._run(shifted) == eng._run(fresh)
    finally:
        L.llama_sampler_free(m_greedy[0])


def test_without_shift_everything_after_the_prefix_is_evaluated(engine: Engine) -> None:
    greedy = SamplerSettings(temperature=0.0, max_tokens=4)
    pinned = engine.tokenize(SYSTEM, add_bos=False)
    a = seg(engine, "user", "First message that will be evicted from the window soon enough.")
    b = seg(engine, "user", "Second message that stays in the window for the next turn as well.")
    gen = engine.tokenize("<|im_start|>assistant\n", add_bos=False)
    engine.reset()
    engine.generate(pinned + a + b + gen, greedy).result()
    g = engine.generate(pinned + b + gen, greedy, allow_shift=False)
    g.result()
    assert g.stats.prompt_shifted == 0
    # Only the common prefix (the pinned block and the "<|im_start|>user\n" both turns start with) is reused.
    assert g.stats.prompt_reused <= len(pinned) + 3
    assert g.stats.prompt_evaluated == len(pinned) + len(b) + len(gen) - g.stats.prompt_reused
