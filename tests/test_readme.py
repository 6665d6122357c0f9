"""The Python examples in README.md run as written."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_examples_run(tmp_path, monkeypatch):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 2
    os.makedirs(tmp_path / "tests")
    os.symlink(os.path.join(REPO, "tests", "golden"), tmp_path / "tests" / "golden")
    monkeypatch.chdir(tmp_path)  # the examples save brt.keras and read tests/golden
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert os.path.exists(tmp_path / "brt.keras")
    assert tuple(namespace["logits"].shape) == (2, 32, 64)


pytestmark = pytest.mark.model
