"""`cattery chat --plain` driven through pipes, as a script would drive it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import DEADLINE, ROOT, run_cattery

GREEDY = ["--temp", "0", "--repeat-penalty", "1.0", "--card", "none"]


def test_scripted_chat_with_slash_commands(cattery_home: Path) -> None:
    script = (
        "\n".join(
            [
                "What is the capital of France?",
                "/stats",
                "/system You are a pirate. Answer like a pirate.",
                "/system",
                "Who are you?",
                "/bogus",
                "/reset",
                "/stats",
                "/help",
                "/quit",
                "This line comes after /quit and must be ignored.",
            ]
        )
        + "\n"
    )
    r = run_cattery("chat", "--plain", "-n", "40", *GREEDY, input=script, home=cattery_home)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Paris" in out
    assert "You are a pirate. Answer like a pirate." in out
    assert out.count("last reply: prompt") == 2
    assert "messages: 2 (2 in the window)" in out  # first /stats, after one exchange
    assert "messages: 0 (0 in the window)" in out  # after /reset
    assert "/system TEXT" in out  # /help
    assert "unknown command /bogus" in r.stderr
    assert "(conversation cleared)" in r.stderr
    # Only replies and command output on stdout: the banner went to stderr.
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stderr and "/help for commands" not in out


def test_reply_is_exactly_what_the_engine_streams(cattery_home: Path, engine) -> None:
    """The plain chat's reply to one message equals a direct engine call on the same rendered prompt."""
    from app.engine.options import SamplerSettings
    from app.prompt.builder import PromptBuilder
    from app.prompt.segments import Message
    from app.prompt.tokens import tokenizer_from

    r = run_cattery(
        "chat", "--plain", "-n", "30", "--system", "Be brief.", *GREEDY, input="Name a fruit.\n", home=cattery_home
    )
    assert r.returncode == 0, r.stderr
    builder = PromptBuilder("gguf", info=engine.info, tokenizer=tokenizer_from(engine), system="Be brief.")
    built = builder.build([Message("user", "Name a fruit.")], n_ctx=engine.n_ctx, reserve=30)
    engine.reset()
    expected = engine.generate(built.tokens, SamplerSettings(temperature=0, repeat_penalty=1.0, max_tokens=30)).result()
    assert r.stdout == expected + "\n"


def test_multiline_message_with_backslash(cattery_home: Path) -> None:
    r = run_cattery(
        "chat", "--plain", "-n", "5", *GREEDY, input="First line\\\nsecond line\n/stats\n", home=cattery_home
    )
    assert r.returncode == 0
    assert "messages: 2" in r.stdout


def test_long_chat_slides_the_window(cattery_home: Path) -> None:
    lines = [f"Message number {i}: " + "tell me about cats and their habits. " * 6 for i in range(8)]
    r = run_cattery(
        "chat",
        "--plain",
        "--ctx",
        "512",
        "-n",
        "60",
        "--ban-eos",
        *GREEDY,
        input="\n".join([*lines, "/stats"]) + "\n",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    stats = [line for line in r.stdout.splitlines() if line.startswith("messages:")][-1]
    total, in_window = stats.removeprefix("messages: ").removesuffix(" in the window)").split(" (")
    assert int(total) == 16
    assert int(in_window) < 16


def test_ctrl_c_stops_a_reply_but_not_the_chat(cattery_home: Path) -> None:
    env = dict(os.environ, CATTERY_HOME=str(cattery_home))
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "chat", "--plain", "--ban-eos", "-n", "4000", "--card", "none"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        bufsize=1,
    )
    try:
        proc.stdin.write("Tell me a very long story about a cat.\n")
        proc.stdin.flush()
        got = ""
        deadline = time.monotonic() + DEADLINE
        while len(got) < 40 and time.monotonic() < deadline:
            got += proc.stdout.read(1)
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("/stats\n/quit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "(stopped)" in err
    assert "cancelled" in out
    assert "Traceback" not in err


def test_chat_with_a_chosen_format_stops_at_the_users_name(cattery_home: Path) -> None:
    r = run_cattery(
        "chat",
        "--plain",
        "--format",
        "raw",
        "--user",
        "Anon",
        "--char",
        "Cat",
        "-n",
        "80",
        "--ban-eos",
        *GREEDY,
        input="Hello, who are you?\n/stats\n",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    assert "format raw (chosen)" in r.stderr
    reply = r.stdout.split("model SmolLM2")[0]
    assert "\nAnon:" not in reply
    assert "next turn: your message plus" in r.stdout


def test_the_line_chat_saves_its_turns_and_continues_the_last_chat(cattery_home: Path) -> None:
    """Like the app: each turn saved; the next run continues the last chat (--new starts one,
    --chat ID continues that one); /reset starts a new chat and keeps the old."""
    import json

    def chats() -> dict[int, int]:
        listed = json.loads(run_cattery("chats", "list", "--json", home=cattery_home).stdout)
        return {c["id"]: c["messages"] for c in listed}

    first = run_cattery("chat", "--plain", "-n", "8", *GREEDY, input="My cat is called Biscuit.\n", home=cattery_home)
    assert first.returncode == 0, first.stderr
    assert chats() == {1: 2}
    again = run_cattery("chat", "--plain", "-n", "8", *GREEDY, input="/stats\n", home=cattery_home)
    assert again.returncode == 0, again.stderr
    assert "(continuing chat 1 " in again.stderr and "messages: 2 (2 in the window)" in again.stdout
    new = run_cattery("chat", "--plain", "--new", "-n", "8", *GREEDY, input="Hello.\n", home=cattery_home)
    assert new.returncode == 0, new.stderr
    assert chats() == {1: 2, 2: 2}
    # --chat 1 continues the first; /reset leaves it as it was and writes into a new chat.
    reset = run_cattery(
        "chat", "--plain", "--chat", "1", "-n", "8", "--temp", "0", input="/reset\nHi again.\n", home=cattery_home
    )
    assert reset.returncode == 0, reset.stderr
    assert "(chat 1 is kept: `cattery chat --chat 1` continues it)" in reset.stderr
    assert chats() == {1: 2, 2: 2, 3: 2}
    # The new chat is the last one now: a plain start continues it.
    last = run_cattery("chat", "--plain", "-n", "8", *GREEDY, input="", home=cattery_home)
    assert "(continuing chat 3 " in last.stderr
    for bad, line in (
        (["--chat", "99"], "99: no chat with that id"),
        (["--chat", "1", "--new"], "--chat continues a saved chat"),
        (["--chat", "1", "--card", "mochi"], "--chat continues a saved chat"),
    ):
        r = run_cattery("chat", "--plain", *bad, input="", home=cattery_home)
        assert r.returncode == 2 and line in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_reopened_line_chat_starts_from_its_kv_snapshot(cattery_home: Path) -> None:
    """Issue 18: the line chat keeps its KV cache when it ends; the next run of that chat puts it
    back and evaluates only the new message. Deleting the chat deletes its snapshot."""
    import json

    first = run_cattery("chat", "--plain", "-n", "8", *GREEDY, input="Tell me about cats.\n", home=cattery_home)
    assert first.returncode == 0, first.stderr
    snapshots = cattery_home / "cache" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == ["1.kv"]
    listed = json.loads(run_cattery("chats", "list", "--json", home=cattery_home).stdout)
    assert listed[0]["snapshot_bytes"] == (snapshots / "1.kv").stat().st_size > 0
    again = run_cattery("chat", "--plain", "-n", "8", *GREEDY, input="And dogs?\n/stats\n", home=cattery_home)
    assert again.returncode == 0, again.stderr
    assert "tokens restored from its KV snapshot" in again.stderr
    [reply] = [line for line in again.stdout.splitlines() if line.startswith("last reply:")]
    evaluated, reused = (int(x) for x in re.search(r"\((\d+) evaluated, (\d+) reused\)", reply).groups())
    assert reused > 0 and evaluated < 20, reply  # the new message and its turn markers only
    assert "opened from its KV snapshot (disk)" in again.stdout
    # A snapshot for other settings (another context size) is not used, and says so once.
    other = run_cattery("chat", "--plain", "--ctx", "1024", "-n", "4", *GREEDY, input="Hi.\n", home=cattery_home)
    assert other.returncode == 0, other.stderr
    assert "was not used" in other.stderr and "another context size" in other.stderr
    rm = run_cattery("chats", "rm", "1", home=cattery_home)
    assert rm.returncode == 0, rm.stderr
    assert not (snapshots / "1.kv").exists()
