"""The default model's corpus (Python's docs) and the pair-share measure."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pagedjax import docs_corpus as dc


def test_words_lowercase_and_strip_surrounding_punctuation():
    assert dc.words("(The) os.path.join() -- returns, \"A\" path.\n\tDone!") == [
        "the", "os.path.join", "returns", "a", "path", "done"]
    assert dc.words("... --- !!") == [] and dc.words("") == []


def test_pair_share_counts_adjacent_pairs_found_in_the_reference():
    reference = dc.word_pairs(["Return a new list.", "The list is empty"])
    assert ("list", "the") not in reference  # pairs never straddle documents
    # pairs: (return, a) yes, (a, new) yes, (new, list) yes, (list, is) yes, (is, full) no
    assert dc.pair_share("RETURN a new, list is full", reference) == pytest.approx(4 / 5)
    assert dc.pair_share("list the", reference) == 0.0
    assert dc.pair_share("word", reference) == 0.0 and dc.pair_share("", reference) == 0.0


def test_file_docstrings_reads_every_docstring_in_source_order(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text('"""Module doc."""\n\nclass A:\n    """Class doc.\n\n        indented\n    """\n\n'
                      '    def f(self):\n        """Method doc.\\x07"""\n\nasync def g():\n    pass\n'
                      'def h():\n    """  """\n')
    assert dc.file_docstrings(str(source)) == "Module doc.\n\nClass doc.\n\nindented\n\nMethod doc."
    broken = tmp_path / "broken.py"
    broken.write_text('"""doc"""\ndef (:\n')
    assert dc.file_docstrings(str(broken)) == ""


def test_source_files_skip_tests_and_third_party_packages(tmp_path):
    for rel in ("a.py", "pkg/b.py", "pkg/notes.txt", "test/c.py", "site-packages/d.py", "pkg/tests/e.py"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('"""x"""\n')
    found = [os.path.relpath(p, tmp_path) for p in dc._source_files(str(tmp_path))]
    assert found == ["a.py", os.path.join("pkg", "b.py")]


def test_split_corpus_holds_out_every_nth_document():
    docs = [f"doc {i}" for i in range(3 * dc.HELDOUT_EVERY)]
    train, heldout = dc.split_corpus(docs)
    assert len(heldout) == 3 and len(train) + len(heldout) == len(docs)
    assert heldout[0] == f"doc {dc.HELDOUT_EVERY - 1}" and not set(train) & set(heldout)


def test_corpus_snapshot_round_trips_and_rejects_other_json(tmp_path):
    path = str(tmp_path / "c.json.xz")
    dc.write_corpus_snapshot(["α doc", "b\n\ndoc"], path)
    assert dc.shipped_corpus(path) == ["α doc", "b\n\ndoc"]
    import lzma

    with open(path, "wb") as f:
        f.write(lzma.compress(json.dumps({"not": "a list"}).encode()))
    with pytest.raises(ValueError, match="list of documents"):
        dc.shipped_corpus(path)


def test_shipped_corpus_is_printable_python_documentation():
    docs = dc.shipped_corpus()
    assert len(docs) > 400 and sum(map(len, docs)) > 1_500_000
    text = "".join(docs)
    assert not any(ord(c) < 32 and c not in "\n" for c in text)  # tabs expanded, control characters gone
    assert "Return a new" in text and "The module" in text
    from pydoc_data.topics import topics

    assert docs.count(topics["assert"].strip()) == 1  # the pydoc topics come in whole


def test_real_documentation_scores_high_and_random_words_low():
    train, heldout = dc.split_corpus(dc.shipped_corpus())
    pairs = dc.word_pairs(train)
    held_words = [w for d in heldout for w in dc.words(d)]
    assert np.mean([dc.pair_share(d, pairs) for d in heldout]) > 0.45  # unseen docs share most of their pairs
    rng = np.random.default_rng(0)
    vocab = sorted(set(held_words))
    shuffled = " ".join(rng.choice(vocab, 400))
    assert dc.pair_share(shuffled, pairs) < 0.1  # the same words in random order do not
