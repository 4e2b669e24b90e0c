"""The README's first command, as a new user (and CI) runs it: a fresh virtual environment, the
command verbatim, from a copy of the repository, offline past PyPI, with no PyTorch.

Two ways to fill the fresh venv's dependencies:
- `local` (always run): the venv sees, through a `.pth` file, a view of exactly the packages that
  `pip install -e .` would install (pagedjax's requirements and theirs, taken from this
  environment; no torch, no jax plugins), so pip finds them satisfied and the run takes seconds
  of installing instead of minutes. pip still builds and installs pagedjax itself (editable,
  build isolation from PyPI or pip's cache), and the `pagedjax` console script is the venv's.
- `pypi` (PAGEDJAX_TEST_FRESH_VENV_FROM_PYPI=1): a bare venv that downloads everything, exactly
  as CI; about 3-4 minutes on 2 cores (measured: venv 12 s, install 193 s, generate 24 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata

import pytest

from tests.test_readme import FIRST_COMMAND, ROOT

pytestmark = pytest.mark.slow
_COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", ".pytest_cache",
                                      ".hypothesis", ".ipynb_checkpoints")


def dependency_closure(requirements: list[str]) -> list:
    """The installed distributions `requirements` need, transitively (markers evaluated, extras
    followed), as `importlib.metadata` distributions."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, stack = {}, [(r, ()) for r in requirements]
    while stack:
        text, parent_extras = stack.pop()
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *parent_extras)):
            continue
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in found:
            continue
        dist = metadata.distribution(req.name)
        found[key] = dist
        stack += [(sub, tuple(req.extras)) for sub in dist.requires or []]
    unique = {canonicalize_name(d.metadata["Name"]): d for d in found.values()}
    return list(unique.values())


def dependency_view(view_dir: str) -> list[str]:
    """Symlinks, in `view_dir`, to the top-level files of every distribution pagedjax's
    requirements need; returns their names (for the test's own checks)."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    os.makedirs(view_dir)
    names = set()
    for dist in dependency_closure(requirements):
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or top in names:
                continue
            source = dist.locate_file(top)
            if os.path.exists(source):
                os.symlink(source, os.path.join(view_dir, top))
                names.add(top)
    return sorted(names)


def _venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _clean_env(venv: str, cache: str) -> dict:
    """The environment of a shell with the venv activated (nothing of this test run's paths)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST"))}
    env.update(VIRTUAL_ENV=venv, PATH=os.path.join(venv, "bin") + os.pathsep + env.get("PATH", ""),
               HF_HUB_OFFLINE="1", PAGEDJAX_CACHE=cache, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="module", params=["local", "pypi"])
def first_run(request, tmp_path_factory):
    """(result of the README's first command, seconds it took, the venv, its environment)."""
    if request.param == "pypi" and os.environ.get("PAGEDJAX_TEST_FRESH_VENV_FROM_PYPI") != "1":
        pytest.skip("downloads every dependency from PyPI (3-4 minutes): set PAGEDJAX_TEST_FRESH_VENV_FROM_PYPI=1")
    tmp = tmp_path_factory.mktemp(f"first-run-{request.param}")
    clone, venv = str(tmp / "pagedjax"), str(tmp / "venv")
    shutil.copytree(ROOT, clone, ignore=_COPY_IGNORE, symlinks=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", venv], check=True, timeout=300)
    if request.param == "local":
        view = dependency_view(str(tmp / "dependencies"))
        assert not [n for n in view if n.startswith(("torch", "pagedjax"))]  # the point of the exercise
        where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        purelib = subprocess.run([_venv_python(venv), "-c", where], capture_output=True, text=True,
                                 check=True).stdout.strip()
        with open(os.path.join(purelib, "_pagedjax_test_dependencies.pth"), "w") as f:
            f.write(str(tmp / "dependencies") + "\n")
    env = _clean_env(venv, str(tmp / "cache"))
    start = time.perf_counter()
    result = subprocess.run(["bash", "-c", FIRST_COMMAND], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=1200)
    return result, time.perf_counter() - start, venv, env


def test_the_first_command_writes_readable_text(first_run, record_property):
    from pagedjax import docs_corpus

    result, seconds, _, _ = first_run
    assert result.returncode == 0, result.stderr[-4000:]
    record_property("first_command_seconds", round(seconds, 1))
    print(f"README's first command in a fresh venv: {seconds:.1f} s")
    text = re.split(r"^Successfully installed .*\n", result.stdout, flags=re.M)[-1]  # after pip's lines
    share = docs_corpus.pair_share(text, docs_corpus.training_word_pairs())
    assert share > 0.4 and len(docs_corpus.words(text)) >= 10, (share, text)
    assert not [ch for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\n\t"]
    generate_err = result.stderr[result.stderr.find("pagedjax: "):]
    assert "pagedjax: compiling the model's steps" in generate_err
    assert re.search(r"^32 tokens in [\d.]+ s", generate_err, re.M), generate_err
    assert "PyTorch was not found" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_the_fresh_venv_has_no_torch_and_bench_says_what_to_do(first_run):
    result, _, venv, env = first_run
    assert result.returncode == 0
    elsewhere = os.path.join(os.path.dirname(venv), "elsewhere")  # not beside the copy (a namespace package)
    os.makedirs(elsewhere, exist_ok=True)
    probe = subprocess.run([_venv_python(venv), "-c", "import importlib.util, json, pagedjax; print(json.dumps("
                            "[importlib.util.find_spec('torch') is None, pagedjax.__file__]))"],
                           env=env, capture_output=True, text=True, timeout=120, cwd=elsewhere)
    no_torch, package_file = json.loads(probe.stdout)
    assert no_torch and package_file == os.path.join(os.path.dirname(venv), "pagedjax", "pagedjax", "__init__.py")
    bench = subprocess.run(["pagedjax", "bench", "throughput", "--num-prompts", "2"], env=env, capture_output=True,
                           text=True, timeout=300, cwd=elsewhere)
    assert bench.returncode == 2 and "Traceback" not in bench.stderr
    assert bench.stderr.strip().splitlines()[-1].startswith(
        "pagedjax: error: the hf-generate and hf-continuous baselines need PyTorch, which is not installed")
