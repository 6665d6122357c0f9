"""notebooks/brt_colab_tpu.ipynb runs top to bottom on CPU in its tiny setting
(its code cells, in order, in one fresh Python process)."""

import json
import os
import subprocess
import sys

import pytest

from trainers import testing

NOTEBOOK = os.path.join(testing.REPO, "notebooks", "brt_colab_tpu.ipynb")


def notebook_code(path=NOTEBOOK):
    with open(path) as f:
        nb = json.load(f)
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in cells:
        assert not any(
            line.lstrip().startswith(("!", "%")) for line in cell.splitlines()
        ), cell
    return "\n\n".join(cells)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
    data_dir = testing.make_fixture_corpus(str(tmp_path / "corpus"))
    script = tmp_path / "notebook.py"
    script.write_text(notebook_code())
    env = testing.env_for(
        "jax",
        {
            "BRT_NOTEBOOK_TINY": "1",
            "BRT_RUN_DIR": str(tmp_path / "run"),
            "BRT_DATA_DIR": data_dir,
        },
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=testing.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("model.keras", "eval_test.json", "export/saved_model"):
        assert os.path.exists(tmp_path / "run" / name), name
    assert "It is a truth" in proc.stdout
