"""The text-format tokenizer and parser scale linearly and stream (issue 14 item 7): a number glued to letters used
to backtrack quadratically (`"name: " + "1" * 16000 + "x"` took ~40 s) and the token list cost ~120 bytes per input
byte. Timings are best-of-3 with generous bounds (the test machine is shared); the quadratic version failed them by
two to three orders of magnitude."""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest

from net.prototxt_loader import PrototxtError, parse_text
from net.textformat import Source, iter_tokens, tokenize

LAYER = """layer {
  name: "conv%d"
  type: "Convolution"
  bottom: "data"
  top: "conv%d"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param { num_output: 64 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } bias_filler { value: 0.2 } }
}
"""


def _big(layers: int) -> str:
    return 'name: "big"\n' + "".join(LAYER % (i, i) for i in range(layers))


def _best_time(fn, repeat: int = 5) -> float:
    """The least CPU time of `repeat` calls (process_time: other processes on a loaded machine do not count), with
    the garbage collector off while timing."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
    finally:
        gc.enable()
    return best


def _bad_number(digits: int) -> None:
    with pytest.raises(PrototxtError, match=r"^<string>:1:7: invalid number '1111"):
        parse_text("name: " + "1" * digits + "x")


@pytest.mark.parametrize("glue", ["x", ".5.", "e+5x", "f1"])
def test_number_glued_to_letters_is_linear(glue):
    for digits in (16_000, 64_000):
        text = "name: " + "1" * digits + glue
        with pytest.raises(PrototxtError, match="invalid number"):
            parse_text(text)
    t16 = _best_time(lambda: _bad_number(16_000))
    t64 = _best_time(lambda: _bad_number(64_000))
    assert t64 < 0.5, f"64k digits took {t64:.3f} s"  # quadratic: ~10 minutes
    assert t64 < 8 * t16 + 0.02, f"16k digits {t16 * 1e3:.2f} ms, 64k {t64 * 1e3:.2f} ms: not linear"


def test_long_fraction_and_exponent_are_linear():
    for text in ("a: 1." + "5" * 64_000 + "x", "a: 1e" + "5" * 64_000 + "x", "a: 0x" + "f" * 64_000 + "g"):
        t = _best_time(lambda text=text: pytest.raises(PrototxtError, parse_text, text, "NetParameter"))
        assert t < 0.5, (text[:8], t)


def test_parse_time_grows_linearly():
    small, large = _big(500), _big(2000)
    assert parse_text(large).layer[1999].name == "conv1999"
    t_small = _best_time(lambda: parse_text(small))
    t_large = _best_time(lambda: parse_text(large))
    assert t_large < 8 * t_small + 0.05, f"4x the text: {t_small:.3f} s -> {t_large:.3f} s"


def test_tokens_stream_in_flat_memory():
    text = _big(8000)  # ~1.9 MB; a token list took ~120 bytes per input byte (~230 MB)
    assert len(text) > 1_900_000
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        count = sum(1 for _ in iter_tokens(Source(text)))
        _, peak = tracemalloc.get_traced_memory()
        assert count > 380_000
        assert peak - base < 1_000_000, f"tokenizing {len(text)} bytes held {peak - base} bytes"

        tracemalloc.reset_peak()
        msg = parse_text(text)
        current, peak = tracemalloc.get_traced_memory()
        # beyond the result itself, parsing holds next to nothing (a token list would be ~230 MB)
        assert peak - current < 1_000_000, f"parsing held {peak - current} bytes beyond its result"
        assert len(msg.layer) == 8000
    finally:
        tracemalloc.stop()


def test_tokens_come_lazily():
    tokens = iter_tokens(Source('name: "x" ' + "$" * 10))  # the bad character is not reached by the first tokens
    assert [next(tokens).text for _ in range(3)] == ["name", ":", '"x"']
    with pytest.raises(PrototxtError, match="unexpected character '\\$'"):
        next(tokens)


def test_a_lexical_error_still_wins_over_an_earlier_parse_error():
    # tokens used to be listed before parsing, so a bad token anywhere was the error reported; kept so
    with pytest.raises(PrototxtError, match=r"^<string>:2:8: invalid number '12ab'"):
        parse_text('nme: "x"\ninput: 12ab\n')
    with pytest.raises(PrototxtError, match=r"^<string>:1:1: unknown field 'nme'"):
        parse_text('nme: "x"\ninput: "12ab"\n')


def test_tokenize_still_lists_every_token():
    toks = tokenize(Source("a: 1.5e-3f # c\nb { c: 'd' }"))
    assert [(t.kind, t.text) for t in toks] == [
        ("ident", "a"),
        ("symbol", ":"),
        ("number", "1.5e-3f"),
        ("ident", "b"),
        ("symbol", "{"),
        ("ident", "c"),
        ("symbol", ":"),
        ("string", "'d'"),
        ("symbol", "}"),
        ("eof", ""),
    ]
    assert toks[-1].pos == len("a: 1.5e-3f # c\nb { c: 'd' }")
