"""net.progress: the one progress bar, drawn on a terminal only."""

from __future__ import annotations

from net.progress import progress_bar


def _run(**kw) -> None:
    bar = progress_bar(50, "working", unit="img", **kw)
    for _ in range(5):
        bar.set_postfix_str("loss 0.5000", refresh=False)
        bar.update(10)
    bar.close()


def test_drawn_on_a_terminal(tty_stderr):
    _run()
    err = tty_stderr.readouterr().err
    assert err.endswith("\n") and "\r" in err
    last = err.rsplit("\r", 1)[-1]
    assert last.startswith("working: 100%") and "50/50" in last and "img/s" in last and "loss 0.5000" in last


def test_quiet_when_disabled_on_a_terminal(tty_stderr):
    _run(enabled=False)  # --no-progress on a terminal
    assert tty_stderr.readouterr() == ("", "")


def test_quiet_in_logs(capsys):
    _run()  # stderr is not a terminal (a log, CI, a pipe)
    bar = progress_bar(None, "counting", unit="B")  # no total: a running count
    bar.update(1500)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_bytes_get_si_prefixes(tty_stderr):
    bar = progress_bar(2_500_000, "downloading w", unit="B")
    bar.update(2_500_000)
    bar.close()
    assert "2.50M/2.50M" in tty_stderr.readouterr().err
