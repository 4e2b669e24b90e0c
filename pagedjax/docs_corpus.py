"""The default model's training text (Python's own documentation) and the pair-share measure.

`python_docs_corpus()` reads text that ships with every CPython install, without importing
anything it reads: the pydoc help topics (`pydoc_data.topics`, the language reference as
`help()` shows it) and every docstring of the standard library's `.py` files, parsed with
`ast` (one document per topic and per source file, its docstrings joined by blank lines).
It depends on the running Python's standard library, and parsing it takes tens of seconds,
so a snapshot (CPython 3.11's, `SHIPPED_CORPUS`, ~0.5 MB of xz) ships with the package:
`shipped_corpus()` reads it in a fraction of a second and on any Python version, which keeps
training reproducible and the measure stable. `corpus_fingerprint` names a corpus.

`pair_share(text, reference_pairs)` measures how much generated text reads like that
corpus: the share of its adjacent word pairs that also occur, adjacent, in the reference
text. Words are whitespace-separated tokens, lowercased, with leading and trailing
punctuation stripped (`"(The"` -> `"the"`, `"os.path.join()."` -> `"os.path.join"`);
tokens that are all punctuation are dropped. Pairs never straddle two documents.
Random weights score a few percent, held-out documentation about 90%.
"""

from __future__ import annotations

import ast
import hashlib
import json
import lzma
import os
import re
import string
import sysconfig
from typing import Iterable

# Standard-library directories left out: tests and their data, third-party packages,
# generated codec tables and GUI/tooling internals.
_SKIPPED_DIRS = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "idlelib",
    "turtledemo", "ensurepip", "encodings", "pydoc_data", "config", "lib-dynload",
})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters but tab and newline
_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014"
SHIPPED_CORPUS = os.path.join(os.path.dirname(__file__), "assets", "python_docs_corpus.json.xz")
HELDOUT_EVERY = 25  # every 25th document is held out of training (validation, the real-docs score)


def _clean(text: str) -> str:
    """Normalises line ends and tabs, drops control characters and trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def pydoc_topics() -> list[str]:
    """The pydoc help topics (`help('FORMATTING')` etc.), one document each, sorted by name."""
    from pydoc_data.topics import topics

    return [_clean(topics[name]) for name in sorted(topics)]


def _source_files(root: str) -> list[str]:
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith("config-"))
        found += [os.path.join(directory, f) for f in sorted(files) if f.endswith(".py")]
    return found


def file_docstrings(path: str) -> str:
    """The docstrings of one source file (module, classes, functions, methods) joined by blank
    lines, in source order; '' if it has none or does not parse on this Python."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, nodes)]
    return "\n\n".join(_clean(d) for d in docs if d and d.strip())


def stdlib_docstrings() -> list[str]:
    """One document per standard-library source file that has docstrings, sorted by path."""
    root = sysconfig.get_paths()["stdlib"]
    return [doc for doc in map(file_docstrings, _source_files(root)) if doc]


def python_docs_corpus() -> list[str]:
    """Every document of the default model's corpus: pydoc topics, then stdlib docstrings."""
    return [doc for doc in pydoc_topics() + stdlib_docstrings() if doc]


def write_corpus_snapshot(documents: list[str], path: str = SHIPPED_CORPUS) -> None:
    """Writes `documents` as xz-compressed JSON (what `shipped_corpus` reads)."""
    raw = json.dumps(documents, ensure_ascii=False, indent=0).encode("utf-8")
    with open(path, "wb") as f:
        f.write(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))


def shipped_corpus(path: str = SHIPPED_CORPUS) -> list[str]:
    """The corpus snapshot the default model was trained on (see the module docstring)."""
    with open(path, "rb") as f:
        documents = json.loads(lzma.decompress(f.read()))
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise ValueError(f"{path} is not a JSON list of documents")
    return documents


def split_corpus(documents: list[str]) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents): every `HELDOUT_EVERY`-th document is held out."""
    train = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


def corpus_fingerprint(documents: list[str]) -> str:
    """sha256 of the documents (names the corpus a checkpoint was trained on)."""
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def words(text: str) -> list[str]:
    """Lowercased whitespace-separated tokens with surrounding punctuation stripped."""
    stripped = (token.strip(_PUNCTUATION) for token in text.lower().split())
    return [w for w in stripped if w]


def word_pairs(documents: Iterable[str]) -> frozenset[tuple[str, str]]:
    """Every adjacent word pair of every document (pairs do not cross documents)."""
    pairs = set()
    for doc in documents:
        ws = words(doc)
        pairs.update(zip(ws, ws[1:]))
    return frozenset(pairs)


def pair_share(text: str, reference_pairs: frozenset[tuple[str, str]] | set) -> float:
    """Share (0..1) of the adjacent word pairs of `text` found in `reference_pairs` (see the
    module docstring); 0.0 when `text` has fewer than two words."""
    ws = words(text)
    pairs = list(zip(ws, ws[1:]))
    if not pairs:
        return 0.0
    return sum(p in reference_pairs for p in pairs) / len(pairs)


def training_word_pairs() -> frozenset[tuple[str, str]]:
    """The word pairs of the default model's training documents (about a second to build)."""
    train, _ = split_corpus(shipped_corpus())
    return word_pairs(train)
