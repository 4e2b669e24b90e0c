"""Fixtures: the test tokenizer, its TokenizerInfo with a padded vocabulary, and a compiler."""

from __future__ import annotations

import pytest

from pagedjax.structured_output import GrammarCompiler, TokenizerInfo
from tests.checkpoints import tokenizer

PADDED_VOCAB = 530  # > len(tokenizer()) == 512, not a multiple of 32: padding ids and a partial last word


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def info(tok):
    return TokenizerInfo.from_huggingface(tok, vocab_size=PADDED_VOCAB)


@pytest.fixture()
def compiler(info):
    compiler = GrammarCompiler(info, cache_size=8)
    yield compiler
    compiler.close()
