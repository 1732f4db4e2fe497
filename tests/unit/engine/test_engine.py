"""The engine on the real bundled model: streaming, stops, cancellation, UTF-8, seeds, KV reuse."""

from __future__ import annotations

import threading
import time

import pytest

from app.engine.engine import Engine
from app.engine.native import LOG
from app.engine.options import LoadOptions, SamplerSettings, load_preset, preset_names
from app.errors import CatteryError, ContextOverflowError
from tests.conftest import DEADLINE

# SmolLM2's own template adds this system prompt when none is given; the model ends turns reliably with it.
CHATML = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


def collect(engine: Engine, prompt, sampler: SamplerSettings, stop=()) -> tuple[list[str], object]:
    """One piece per token (no coalescing), so tests can see token boundaries."""
    gen = engine.generate(prompt, sampler, stop, stream_interval=0)
    pieces = list(gen)
    return pieces, gen


def test_streams_pieces_and_reports_stats(engine: Engine, greedy: SamplerSettings) -> None:
    pieces, gen = collect(engine, CHATML.format("Name three colours."), greedy)
    assert len(pieces) > 3
    assert "".join(pieces) == gen.text
    s = gen.stats
    assert s.prompt_tokens == s.prompt_evaluated + s.prompt_reused
    assert 1 <= s.generated_tokens <= greedy.max_tokens
    assert s.finish_reason in ("stop", "length")
    assert s.time_to_first_token > 0
    assert s.decode_tokens_per_second > 0


def test_end_of_turn_token_ends_the_reply(engine: Engine, greedy: SamplerSettings) -> None:
    _, gen = collect(engine, CHATML.format("Say hello."), greedy.updated(max_tokens=200))
    assert gen.stats.finish_reason == "stop"
    assert "<|im_end|>" not in gen.text and "<|im_start|>" not in gen.text


def test_max_tokens_and_ban_eos(engine: Engine, greedy: SamplerSettings) -> None:
    _, gen = collect(engine, CHATML.format("Say hello."), greedy.updated(max_tokens=25, ban_eos=True))
    assert gen.stats.generated_tokens == 25
    assert gen.stats.finish_reason == "length"


def test_kv_cache_is_reused_for_a_repeated_prompt(engine: Engine, greedy: SamplerSettings) -> None:
    prompt = CHATML.format("What is a cat? Answer in one sentence.")
    _, first = collect(engine, prompt, greedy)
    _, second = collect(engine, prompt, greedy)
    assert second.stats.prompt_reused == second.stats.prompt_tokens - 1
    assert second.stats.prompt_evaluated == 1
    # A longer prompt sharing the start evaluates only what is new.
    longer = prompt + first.text + "<|im_end|>\n" + CHATML.format("And a dog?")
    _, third = collect(engine, longer, greedy)
    assert third.stats.prompt_reused >= first.stats.prompt_tokens
    assert third.stats.prompt_evaluated < third.stats.prompt_tokens - first.stats.prompt_tokens + 8
    engine.reset()
    _, fourth = collect(engine, prompt, greedy)
    assert fourth.stats.prompt_reused == 0
    assert fourth.text == first.text


def test_seed_reproduces_a_sampled_reply(engine: Engine) -> None:
    sampler = SamplerSettings(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, max_tokens=40, ban_eos=True)
    prompt = CHATML.format("Write a line of a poem about the sea.")
    runs = []
    for seed in (1234, 1234, 99):
        engine.reset()
        _, gen = collect(engine, prompt, sampler.updated(seed=seed))
        assert gen.stats.seed == seed
        runs.append(gen.text)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    _, unseeded = collect(engine, prompt, sampler.updated(max_tokens=2))
    assert isinstance(unseeded.stats.seed, int)


def test_top_k_one_and_min_p_one_are_greedy(engine: Engine, greedy: SamplerSettings) -> None:
    prompt = CHATML.format("List some fruits.")
    engine.reset()
    expected = engine.generate(prompt, greedy).result()
    for seed in (1, 2):
        engine.reset()
        hot = SamplerSettings(
            temperature=1.5, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=greedy.max_tokens, seed=seed
        )
        assert engine.generate(prompt, hot).result() == expected
        engine.reset()
        minp = hot.updated(top_k=0, min_p=1.0)
        assert engine.generate(prompt, minp).result() == expected


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_a_working_sampler(engine: Engine, name: str) -> None:
    sampler = load_preset(name).updated(max_tokens=8, seed=7, ban_eos=True)
    gen = engine.generate(CHATML.format("Hi!"), sampler)
    gen.result()
    assert gen.stats.generated_tokens == 8


def test_every_sampler_knob_reaches_llama_cpp(engine: Engine) -> None:
    knobs = SamplerSettings(
        temperature=0.9,
        top_k=30,
        top_p=0.9,
        min_p=0.02,
        typical_p=0.8,
        repeat_penalty=1.3,
        repeat_last_n=-1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        max_tokens=12,
        seed=5,
        ban_eos=True,
    )
    for mirostat in (0, 1, 2):
        gen = engine.generate(CHATML.format("Hi!"), knobs.updated(mirostat=mirostat))
        gen.result()
        assert gen.stats.generated_tokens == 12


def test_grammar_forces_text_and_utf8_survives_token_boundaries(engine: Engine) -> None:
    target = "猫は🐱が好き 🎉"
    tokens = engine.tokenize(target, add_bos=False)
    pieces = engine._run(lambda m: [m.piece(t) for t in tokens])
    undecodable = 0
    for p in pieces:
        try:
            p.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable > 0, "the target should contain characters split across tokens"

    sampler = SamplerSettings(temperature=0.0, max_tokens=40, grammar=f'root ::= "{target}"')
    out, gen = collect(engine, CHATML.format("Say something about cats."), sampler)
    assert gen.text == target
    assert all("\ufffd" not in p for p in out)


def test_stop_string_split_across_tokens_never_leaks(engine: Engine) -> None:
    target = "The quick brown fox jumps over the lazy dog near the riverbank today."
    forced = SamplerSettings(temperature=0.0, max_tokens=60, grammar=f'root ::= "{target}"')
    prompt = CHATML.format("Write a sentence.")
    pieces, _ = collect(engine, prompt, forced)
    assert "".join(pieces) == target
    # Pick a stop string made of the end of one piece and the start of the next.
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 3 and len(pieces[i + 1]) >= 3)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    assert stop not in pieces[i] and stop not in pieces[i + 1]
    out, gen = collect(engine, prompt, forced, stop=[stop])
    expected = target[: target.index(stop)]
    assert "".join(out) == expected
    assert gen.stats.finish_reason == "stop_string"
    assert gen.stats.stop_string == stop


def test_bad_grammar_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(CatteryError, match="grammar"):
        engine.generate(CHATML.format("x"), SamplerSettings(grammar="root ::= (")).result()


def test_cancel_from_another_thread_takes_effect_within_one_token(engine: Engine) -> None:
    sampler = SamplerSettings(temperature=0.8, max_tokens=2000, ban_eos=True, seed=3)
    gen = engine.generate(CHATML.format("Tell me a very long story."), sampler, stream_interval=0)
    model = engine._model
    seen: dict[str, int] = {}

    def cancel() -> None:
        seen["kv_at_cancel"] = len(model.kv_tokens)
        gen.cancel()

    for received, _ in enumerate(gen, start=1):
        if received == 10:
            t = threading.Thread(target=cancel)
            t.start()
            t.join()
    assert gen.stats.finish_reason == "cancelled"
    assert len(model.kv_tokens) - seen["kv_at_cancel"] <= 1
    assert gen.stats.generated_tokens < 2000


def test_cancel_interrupts_a_long_prompt_evaluation(engine: Engine) -> None:
    engine.reset()
    text = " ".join(f"item{i}" for i in range(300))
    prompt = engine.tokenize(CHATML.format(f"Summarise: {text}"))
    assert len(prompt) > 1000
    gen = engine.generate(prompt, SamplerSettings(max_tokens=5))
    model = engine._model
    deadline = time.monotonic() + DEADLINE
    while len(model.kv_tokens) < 256 and time.monotonic() < deadline:
        time.sleep(0.001)
    gen.cancel()
    assert gen.result() == ""
    assert gen.stats.finish_reason == "cancelled"
    assert gen.stats.generated_tokens == 0
    evaluated = len(engine.cached_tokens())
    assert 256 <= evaluated < len(prompt)
    # The part evaluated before the cancel is kept and reused.
    again = engine.generate(prompt, SamplerSettings(max_tokens=2))
    again.result()
    assert again.stats.prompt_reused == evaluated


def test_breaking_out_of_the_stream_cancels(engine: Engine) -> None:
    gen = engine.generate(CHATML.format("Count to one hundred."), SamplerSettings(max_tokens=500, ban_eos=True))
    for i, _ in enumerate(gen):
        if i == 3:
            break
    assert gen.stats is not None and gen.stats.finish_reason == "cancelled"
    # The engine is free for the next reply at once.
    assert engine.generate(CHATML.format("Hi"), SamplerSettings(max_tokens=3)).result() is not None


def test_prompt_longer_than_context_is_refused(engine: Engine) -> None:
    tokens = engine.tokenize("word " * 3000)
    with pytest.raises(ContextOverflowError, match="context holds 2048"):
        engine.generate(tokens, SamplerSettings(max_tokens=4)).result()


def test_generation_stops_when_the_context_is_full(model_path) -> None:
    small = Engine()
    try:
        small.load(model_path, LoadOptions(ctx=256, threads=2, warmup=False))
        tokens = small.tokenize("word " * 400)[: small.n_ctx - 20]
        gen = small.generate(tokens, SamplerSettings(max_tokens=500, ban_eos=True, temperature=0.0))
        gen.result()
        assert gen.stats.finish_reason == "context_full"
        # 20 free positions, and the token sampled from the last of them is still shown.
        assert gen.stats.generated_tokens == 21
        assert len(small.cached_tokens()) == small.n_ctx
    finally:
        small.close()


def test_load_report_and_context_rounding(model_path) -> None:
    eng = Engine()
    try:
        report = eng.load(model_path, LoadOptions(ctx=1000, threads=1, warmup=False))
        assert report.n_ctx == 1024
        assert report.n_ctx_train == 8192
        assert report.n_layers == 30
        assert report.gpu_layers == 0
        assert report.placement.startswith("CPU")
        assert report.warnings == []
        # Loading another model (here: the same file) replaces the first one.
        report2 = eng.load(model_path, LoadOptions(ctx=512, threads=1, warmup=False))
        assert report2.n_ctx == 512
        assert eng.generate(CHATML.format("Hi"), SamplerSettings(max_tokens=2)).result() is not None
    finally:
        eng.close()


def test_context_beyond_training_warns_and_rope_scale_is_applied(model_path) -> None:
    eng = Engine()
    try:
        report = eng.load(model_path, LoadOptions(ctx=16384, threads=1, warmup=False))
        assert len(report.warnings) == 1
        assert "trained for (8192)" in report.warnings[0] and "--rope-scale 2" in report.warnings[0]
        mark = LOG.mark()
        report = eng.load(model_path, LoadOptions(ctx=16384, rope_scale=2.0, threads=1, warmup=False))
        assert report.warnings == []
        assert report.n_ctx == 16384
        assert any("freq_scale" in line and "= 0.5" in line for line in LOG.lines_since(mark))
        mark = LOG.mark()
        eng.load(model_path, LoadOptions(ctx=512, rope_freq_base=20000.0, threads=1, warmup=False))
        assert any("freq_base" in line and "20000" in line for line in LOG.lines_since(mark))
    finally:
        eng.close()


def test_metadata_matches_what_llama_cpp_reads(engine: Engine) -> None:
    info = engine.info
    model = engine._model
    assert info.block_count == model.n_layer
    assert info.context_length == model.n_ctx_train
    assert info.vocab_size == model.n_vocab
    assert info.bos_token_id == model.bos_token
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert "<|im_start|>" in info.chat_template


def test_fast_tokens_are_coalesced_into_fewer_pieces(engine: Engine) -> None:
    sampler = SamplerSettings(temperature=0.0, max_tokens=60, ban_eos=True)
    prompt = CHATML.format("Count from one to fifty.")
    per_token, _ = collect(engine, prompt, sampler)
    gen = engine.generate(prompt, sampler, stream_interval=10.0)  # longer than the whole reply
    coalesced = list(gen)
    assert "".join(coalesced) == "".join(per_token)
    assert len(per_token) == 60
    assert len(coalesced) == 2  # the first token at once, the rest at the end


@pytest.mark.parametrize(
    "options",
    [
        LoadOptions(ctx=512, cache_type_k="q8_0", cache_type_v="q8_0", flash_attn="auto"),
        LoadOptions(ctx=512, cache_type_k="q4_0", flash_attn="off"),
        LoadOptions(ctx=512, flash_attn="on", batch=64),
        LoadOptions(ctx=512, mmap=False),
        LoadOptions(ctx=512, threads=1, threads_batch=2),
    ],
    ids=["q8_0-cache", "q4_0-k-no-flash", "flash-on-small-batch", "no-mmap", "threads"],
)
def test_load_options_reach_llama_cpp(model_path, options: LoadOptions) -> None:
    eng = Engine()
    try:
        mark = LOG.mark()
        options.warmup = False
        report = eng.load(model_path, options)
        log = "\n".join(LOG.lines_since(mark))
        assert report.cache_type_k == options.cache_type_k
        if options.cache_type_k != "f16":
            assert f"K ({options.cache_type_k})" in log
        if not options.mmap:
            assert "load_mode = none" in log
        if options.flash_attn != "auto":
            assert f"flash_attn            = {'enabled' if options.flash_attn == 'on' else 'disabled'}" in log
        gen = eng.generate(CHATML.format("Hi"), SamplerSettings(temperature=0.0, max_tokens=8))
        gen.result()
        assert gen.stats.generated_tokens >= 1
    finally:
        eng.close()


def test_gpu_layers_on_a_cpu_build_says_so(model_path) -> None:
    from app.engine.native import offload_supported

    eng = Engine()
    try:
        report = eng.load(model_path, LoadOptions(ctx=512, gpu_layers=10, warmup=False))
        if offload_supported():  # only on a GPU build
            assert report.gpu_layers == 10 and report.placement == "GPU 10/31 layers"
        else:
            assert report.gpu_layers == 0
            assert any("no GPU offload" in w for w in report.warnings)
            assert report.placement.startswith("CPU")
    finally:
        eng.close()
