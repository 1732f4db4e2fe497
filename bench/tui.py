"""How the chat screen keeps up: streaming lag, key handling, `cattery --help`, first frame.

1. Streaming: the real chat screen of a headless app, its reply view fed by a thread
   that posts pieces at 200 tokens/s (one message per token, as a model faster than
   the screen would be without the engine's coalescing). Every 10 ms the text that
   has reached the reply's Markdown widget is compared with what was sent: whenever
   new text has appeared, the lag is how long ago the newest piece now shown was posted. The lag of the first and
   the last fifth of the stream says whether it grows.
2. Keys: while the stream runs, a key is pressed in the message box every 250 ms,
   and the time until the box holds it is measured.
3. `cattery --help`, from a fresh process to exit.
4. First frame: the real `cattery` started in a pseudo-terminal, on a home with a
   200-message chat, until that chat's title is on the screen (the model loads
   after it, in the background; that time is reported too).

    python bench/tui.py [--tokens 2000] [--rate 200]

Targets: no growing lag at 200 tokens/s, key handling < 50 ms, --help < 0.3 s,
first frame < 1.5 s. Writes bench/out/tui.json and a row in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, median, now, write_json

ROOT = Path(__file__).resolve().parent.parent
TITLE = "A long chat for the benchmark"


async def stream_and_press(tokens: int, rate: float, home: Path) -> tuple[list[float], list[float]]:
    os.environ["CATTERY_HOME"] = str(home)
    from textual import events

    from app.session.launch import Launch
    from app.session.workspace import Workspace
    from app.tui.app import CatteryApp
    from app.tui.messages import Piece
    from app.tui.widgets.chat_input import ChatInput

    ws = Workspace()
    ws.settings.set("ui", "cursor_blink", False)
    app = CatteryApp(ws, Launch(load_model=False))
    sent: list[tuple[float, int]] = []  # (posted at, characters sent so far)
    lags: list[float] = []
    keys: list[float] = []
    done = threading.Event()

    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.pause(0.5)
        chat = app.get_screen_stack("chat")[0]
        chat.busy = "reply"
        chat.serial += 1
        await chat._prepare_stream("reply", None)
        serial = chat.serial
        view = chat.target

        def produce() -> None:
            interval = 1.0 / rate
            start = time.perf_counter()
            total = 0
            for i in range(tokens):
                target = start + i * interval
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                piece = f"word{i} " + ("\n\n" if i % 40 == 39 else "")
                total += len(piece)
                sent.append((time.perf_counter(), total))
                chat.post_message(Piece(serial, piece))
            done.set()

        last_shown = [0]

        def sample() -> None:
            shown = len(view.shown_text)
            if shown == last_shown[0]:
                return  # nothing new on screen: the lag is measured when text appears
            last_shown[0] = shown
            t = time.perf_counter()
            newest = None
            for posted, total in reversed(sent):
                if total <= shown:
                    newest = posted
                    break
            if newest is not None and shown:
                lags.append(t - newest)

        timer = app.set_interval(0.01, sample)
        threading.Thread(target=produce, daemon=True).start()
        box = chat.query_one(ChatInput)
        box.focus()
        while not done.is_set():
            await asyncio.sleep(0.25)
            before = box.text
            t = time.perf_counter()
            # As the terminal driver delivers a key press (Pilot.press would wait for the
            # app to go idle, which it never does while 200 pieces a second arrive).
            app.post_message(events.Key("x", "x"))
            while box.text == before:
                await asyncio.sleep(0.001)
            keys.append(time.perf_counter() - t)
        total_sent = sent[-1][1]
        while len(view.shown_text) < total_sent:
            await pilot.pause(0.05)
        timer.stop()
    ws.close()
    return lags, keys


def timed(cmd: list[str], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return median(times)


def make_long_chat(home: Path, messages: int = 200) -> None:
    os.environ["CATTERY_HOME"] = str(home)
    from app.session.chat import start_session
    from app.session.workspace import Workspace

    ws = Workspace()
    s = start_session(ws, "bundled:mochi")
    ws.store.rename_chat(s.chat_id, TITLE)
    para = "Cats sleep twelve to sixteen hours a day, mostly in short naps. *She flicks her tail.* "
    for i in range(messages // 2):
        ws.store.add_message(s.chat_id, "user", f"Question {i}: tell me something about cats.")
        ws.store.add_message(s.chat_id, "assistant", para * 3 + f"**Fact {i}.** Nyan")
    ws.store.set_state("last_chat", str(s.chat_id))
    ws.close()


def first_frame(home: Path) -> tuple[float, float]:
    """(seconds to the chat on screen, seconds to the model loaded) for the real `cattery` in a pty."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 34, 110, 0, 0))
    env = {**os.environ, "CATTERY_HOME": str(home), "TERM": "xterm-256color"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "cattery")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(slave)
    out = bytearray()
    frame = loaded = 0.0
    deadline = t0 + 120
    try:
        while time.perf_counter() < deadline and not loaded:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
            if not frame and TITLE.encode() in out:
                frame = time.perf_counter() - t0
            if frame and b"SmolLM2-135M-Instruct.Q4_1 \xc2\xb7" in out:
                loaded = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.close(master)
    return frame, loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        lags, keys = asyncio.run(stream_and_press(args.tokens, args.rate, Path(tmp) / "stream"))
        home = Path(tmp) / "frame"
        make_long_chat(home)
        frames = [first_frame(home) for _ in range(3)]
    tenth = max(1, len(lags) // 10)
    deciles = [round(median(lags[i * tenth : (i + 1) * tenth]) * 1000, 1) for i in range(10)]
    fifth = max(1, len(lags) // 5)
    early, late = median(lags[:fifth]), median(lags[-fifth:])
    help_time = timed([str(Path(sys.executable).parent / "cattery"), "--help"])
    frame = median([f for f, _ in frames])
    loaded = median([m for _, m in frames])
    result = {
        "benchmark": "tui",
        "when": now(),
        "machine": machine(),
        "tokens": args.tokens,
        "rate": args.rate,
        "samples": len(lags),
        "lag_first_fifth_median": early,
        "lag_last_fifth_median": late,
        "lag_max": max(lags) if lags else None,
        "lag_median_by_tenth_ms": deciles,
        "key_median": median(keys),
        "key_max": max(keys) if keys else None,
        "keys_pressed": len(keys),
        "help_seconds": help_time,
        "first_frame_seconds": frame,
        "model_ready_seconds": loaded,
        "targets": {"key_ms": 50, "help_s": 0.3, "first_frame_s": 1.5},
    }
    out = write_json("tui", result)
    print(
        f"{args.tokens} pieces at {args.rate:.0f}/s: screen lag {early * 1000:.0f} ms early, {late * 1000:.0f} ms late"
        f" (max {result['lag_max'] * 1000:.0f} ms, by tenth {deciles}); key median {median(keys) * 1000:.1f} ms"
        f" (max {max(keys) * 1000:.1f} ms, {len(keys)} keys); --help {help_time:.3f} s;"
        f" first frame {frame:.2f} s (model ready {loaded:.2f} s); wrote {out}"
    )
    if not args.no_record:
        m = result["machine"]
        append_result_row(
            "Chat screen responsiveness (`python bench/tui.py`)",
            [
                "date",
                "machine",
                "stream",
                "screen lag early / late (median)",
                "lag max",
                "key (median / max)",
                "--help",
                "first frame (200-message chat)",
                "model ready",
            ],
            [
                result["when"],
                f"{m['cpu']}, {m['logical_cores']} cores",
                f"{args.tokens} pieces at {args.rate:.0f}/s",
                f"{early * 1000:.0f} / {late * 1000:.0f} ms",
                f"{result['lag_max'] * 1000:.0f} ms",
                f"{median(keys) * 1000:.1f} / {max(keys) * 1000:.1f} ms",
                f"{help_time:.3f} s",
                f"{frame:.2f} s",
                f"{loaded:.2f} s",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
