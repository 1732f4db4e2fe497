"""The progress line of long work: tensors, bytes and time left, on a clock the test moves."""

from __future__ import annotations

from app.progress import Meter, fmt_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_left_is_reckoned_on_bytes_and_restarts_with_each_step() -> None:
    clock = Clock()
    meter = Meter(clock=clock)
    assert meter.line(0, 10, "a", 0, 1000) == "0/10 tensors · 0 B of 1.0 KB · 0% · a"
    clock.now += 30
    # 2 of 10 tensors but 750 of 1000 bytes: a quarter of the work is left, 10 s of it
    assert meter.line(2, 10, "b", 750, 1000) == "2/10 tensors · 750 B of 1.0 KB · 75% · 0:10 left · b"
    assert meter.line(10, 10, "", 1000, 1000) == "10/10 tensors · 1.0 KB of 1.0 KB · 100%"
    meter.line(1, 10, "", 100, 1000)  # a count that falls back: the next step, a new clock
    clock.now += 0.5
    assert "left" not in meter.line(2, 10, "", 200, 1000)  # under a second says nothing yet
    clock.now += 0.5
    assert meter.line(3, 10, "", 300, 1000).endswith("30% · 0:02 left")
    assert Meter("chunks", clock).line(1, 4) == "1/4 chunks · 25%"
    download = Meter(clock=clock)
    download.line(0, 0, "model.safetensors", 0, 4 * 10**9)
    clock.now += 60
    assert download.line(0, 0, "model.safetensors", 10**9, 4 * 10**9) == (
        "1.0 GB of 4.0 GB · 25% · 3:00 left · model.safetensors"
    )
    assert fmt_duration(3725) == "1:02:05" and fmt_duration(-1) == "0:00"
