"""The README keeps its promises: the two set-up commands on top, a Python tour that runs as
written on the built-in model (offline), and links that work in a clone."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_COMMAND = 'pip install -e . && pagedjax generate --prompt "The quick brown fox"'
TEST_COMMAND = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -n 2 tests'
NOT_RUN_MARKER = "# hub example"  # a Python block whose first line starts so is not executed
DOCS = ["README.md", "benchmarks/README.md", "pagedjax/assets/default_model/README.md",
        *(f"docs/{name}" for name in sorted(os.listdir(os.path.join(ROOT, "docs"))) if name.endswith(".md"))]


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.S | re.M)


def test_the_two_set_up_commands_open_the_readme():
    readme = _read("README.md")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert readme.index(first_block.group(0)) < readme.index("\n## ")  # before any section
    assert first_block.group(1).splitlines() == [FIRST_COMMAND, TEST_COMMAND]
    # what they rely on: the console script, and CI running the second one verbatim
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["pagedjax"] == "pagedjax.cli:main"
    assert "grep -m1 '^pip install torch==2.13.0' README.md" in _read(".ci/run")
    assert "## What you just ran" in readme


@pytest.mark.parametrize("doc", DOCS)
def test_links_work_in_a_clone(doc):
    text = _read(doc)
    base = os.path.dirname(os.path.join(ROOT, doc))
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)]
    local = [t for t in targets if t and not re.match(r"[a-z]+://", t)]
    for target in local:
        path = os.path.normpath(os.path.join(base, target))
        assert path.startswith(ROOT + os.sep), f"{doc} links outside the repository: {target}"
        assert os.path.exists(path), f"{doc} links to a missing {target}"
    if doc == "README.md":
        assert {"docs/multihost.md", "docs/design.md", "benchmarks/README.md"} <= set(local)


def test_the_python_tour_runs_as_written_offline(tmp_path):
    blocks = python_blocks(_read("README.md"))
    skipped = [b for b in blocks if b.startswith(NOT_RUN_MARKER)]
    run = [b for b in blocks if not b.startswith(NOT_RUN_MARKER)]
    assert len(run) >= 2 and skipped  # the tour runs; hub examples are marked
    assert not [b for b in run if re.search(r'LLM\("[^"]*/', b) or "OpenAI(" in b]  # no hub id or server in the run
    script = tmp_path / "tour.py"
    script.write_text("\n".join(run))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the suite's compilation cache: steps other tests compiled
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("'") and lines[0].endswith(" length") and "'num_kv_blocks'" in lines[2]
