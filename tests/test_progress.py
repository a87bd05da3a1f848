"""Progress displays: on by default, silent for fast steps, a final line with the rate for
slow ones, the time left while running; off with set_progress(False), TUNELESS_PROGRESS=0
or --quiet."""

import pytest

import tuneless.progress as P


@pytest.fixture(autouse=True)
def _restore():
    old = P._enabled
    yield
    P._enabled = old


def _clock(monkeypatch, step):
    now = iter(range(0, 10_000, step))
    monkeypatch.setattr(P.time, "perf_counter", lambda: float(next(now)))


def test_a_slow_step_reports_its_rate_and_time_left(monkeypatch, capsys):
    _clock(monkeypatch, 16)  # 16 s per item: a line every 30 s, with the time left
    P.set_progress(True)
    assert list(P.progress(range(4), total=4, desc="refit", unit="layer")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("refit 2/4") and "s left" in lines[0]
    assert lines[-1].startswith("refit 4/4") and "left" not in lines[-1]


def test_fast_steps_stay_silent_and_the_switches_turn_it_off(monkeypatch, capsys):
    _clock(monkeypatch, 1)
    P.set_progress(True)
    list(P.progress(range(3), total=3, desc="fast"))
    assert capsys.readouterr().err == ""
    _clock(monkeypatch, 40)
    P.set_progress(False)
    list(P.progress(range(3), total=3, desc="slow"))
    ticker = P.Ticker(3, desc="ticks")
    for _ in range(3):
        ticker.update()
    ticker.close()
    assert capsys.readouterr().err == ""
    P._enabled = None
    monkeypatch.setenv("TUNELESS_PROGRESS", "0")
    assert not P.progress_enabled()
    monkeypatch.setenv("TUNELESS_PROGRESS", "1")
    assert P.progress_enabled()


def test_quiet_flag_turns_progress_off(tmp_path):
    from tuneless.cli import main

    P.set_progress(True)
    main(["--quiet", "inspect", str(tmp_path / "missing.pt")])
    assert P.progress_enabled() is False
