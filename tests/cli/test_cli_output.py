"""What the command line prints around results: escaped text, the progress line, the preset note,
quiet imports, and the benchmark's PyTorch check (in-process; tests/cli/test_cli.py runs it as a
subprocess)."""

from __future__ import annotations

import io
import json
import logging
import time
import unicodedata

import pytest

from pagedjax import cli
from pagedjax.cli_output import ProgressLine, printable, quiet_transformers_notices

TINY_PRESET = "tiny-random-test"  # added to models.presets.PRESETS by the tests below


def test_printable_escapes_control_characters_but_newlines_and_tabs():
    text = "a\tb\nc\x1b[31mred\x07\r\x00\x7f\x85 caf\u00e9 \u2014 \U0001f600"
    out = printable(text)
    assert out == "a\tb\nc\\x1b[31mred\\x07\\x0d\\x00\\x7f\\x85 caf\u00e9 \u2014 \U0001f600"
    assert not [ch for ch in out if unicodedata.category(ch) == "Cc" and ch not in "\n\t"]
    assert printable("plain text\n") == "plain text\n"


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_line_is_written_once_off_a_terminal_and_only_when_slow():
    stream = _Stream(tty=False)
    with ProgressLine("compiling", stream, delay=0.05) as line:
        time.sleep(0.3)
    assert line.shown and stream.getvalue() == "pagedjax: compiling ...\n"
    quick = _Stream(tty=False)
    with ProgressLine("compiling", quick, delay=5.0) as line:
        pass
    assert not line.shown and quick.getvalue() == ""


def test_progress_line_spins_on_a_terminal_and_erases_itself():
    stream = _Stream(tty=True)
    with ProgressLine("compiling", stream, delay=0.0, interval=0.02):
        time.sleep(0.3)
    frames = stream.getvalue().split("\r")[1:]
    assert len(frames) >= 3 and frames[0].startswith("| pagedjax: compiling (0 s)")
    assert frames[1].startswith("/ pagedjax: compiling") and frames[-1] == "\033[K"
    with pytest.raises(ValueError, match="interval"):
        ProgressLine("x", stream, interval=0)


def test_the_transformers_torch_notice_is_filtered_and_nothing_else():
    logger = logging.getLogger("transformers")
    quiet_transformers_notices()
    quiet_transformers_notices()  # idempotent
    assert sum(type(f).__name__ == "_DropTorchNotice" for f in logger.filters) == 1

    def record(msg):
        return logging.LogRecord("transformers", logging.WARNING, __file__, 1, msg, (), None)

    assert not logger.filter(record("PyTorch was not found. Models won't be available and only tokenizers, ..."))
    assert logger.filter(record("Some other warning"))


@pytest.fixture
def tiny_preset(monkeypatch):
    """A preset (random weights, no tokenizer) with the shipped model's shape and vocabulary."""
    from models.presets import PRESETS
    from pagedjax.default_model import DEFAULT_MODEL_DIR

    with open(f"{DEFAULT_MODEL_DIR}/config.json") as f:
        monkeypatch.setitem(PRESETS, TINY_PRESET, json.load(f))
    return DEFAULT_MODEL_DIR


def _generate(capsys, *args):
    code = cli.main(["generate", "--model", TINY_PRESET, "--max-model-len", "128", "--num-kv-blocks", "32", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_preset_is_noted_once_needs_a_tokenizer_and_its_raw_output_is_escaped(tiny_preset, capsys):
    code, out, err = _generate(capsys, "--prompt", "The")
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == (f"pagedjax: error: {TINY_PRESET} has no tokenizer to turn --prompt into "
                                    f"tokens: pass --tokenizer DIR_OR_HUB_ID")
    common = ["--tokenizer", tiny_preset, "--prompt", "The", "--max-tokens", "48", "--ignore-eos",
              "--temperature", "1.0", "--seed", "3"]
    code, out, err = _generate(capsys, *common, "--json")
    assert code == 0, err
    raw = json.loads(out)["text"]
    controls = [ch for ch in raw if unicodedata.category(ch) == "Cc" and ch not in "\n\t"]
    assert controls, "random weights at this seed should emit a control byte (the case being tested)"
    assert err.count("random weights") == 1 and f"pagedjax: note: {TINY_PRESET} is a preset" in err
    code, out, err = _generate(capsys, *common)
    assert code == 0, err
    assert out == printable(raw) + "\n"
    assert not [ch for ch in out if unicodedata.category(ch) == "Cc" and ch not in "\n\t"]


def test_bench_throughput_without_torch_is_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code = cli.main(["bench", "throughput", "--num-prompts", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == ("pagedjax: error: the hf-generate and hf-continuous baselines need PyTorch, which is not "
                           "installed: install the test extra (pip install -e '.[test]') or torch, or leave the HF "
                           "baselines out with --baselines none (or --baselines jax-static)")
    from pagedjax.bench.cli import require_torch_for

    require_torch_for(("jax-static",))  # no HF baseline: nothing needs torch
