"""Colab TPU: requirements-tpu.txt keeps the runtime's jax, and the notebook
uses it on TPU runtimes (offline: pip resolves against installed metadata)."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import types

import pytest

from tests.test_trainers_notebook import NOTEBOOK
from trainers import testing

REQUIREMENTS = os.path.join(testing.REPO, "requirements.txt")
TPU_REQUIREMENTS = os.path.join(testing.REPO, "requirements-tpu.txt")
TPU_JAX = "0.7.1"  # a TPU runtime's jax, not the one requirements.txt pins


def requirement_lines(path):
    with open(path) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [line for line in lines if line]


def test_tpu_requirements_are_the_main_ones_without_jax():
    main = requirement_lines(REQUIREMENTS)
    tpu = requirement_lines(TPU_REQUIREMENTS)
    assert not [r for r in tpu if re.match(r"(jax|jaxlib|libtpu)\b", r)], tpu
    assert tpu == [r for r in main if not r.startswith("jax")]


@pytest.fixture(scope="module")
def tpu_runtime_env(tmp_path_factory):
    """A virtualenv that looks like a Colab TPU runtime with this project's
    other packages installed: the metadata (name, version, dependencies) of
    every package of the test environment, but jax/jaxlib at TPU_JAX."""
    root = tmp_path_factory.mktemp("tpu_env")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True
    )
    py = root / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    fake = {
        "jax": f"Requires-Dist: jaxlib<={TPU_JAX},>={TPU_JAX}\n",
        "jaxlib": "",
    }
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        key = re.sub(r"[-_.]+", "_", name).lower()
        if key in fake or key == "pip":
            continue
        info = os.path.join(site, f"{key}-{dist.version}.dist-info")
        os.makedirs(info, exist_ok=True)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(dist.read_text("METADATA") or "")
    for name, requires in fake.items():
        info = os.path.join(site, f"{name}-{TPU_JAX}.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(
                f"Metadata-Version: 2.1\nName: {name}\nVersion: {TPU_JAX}\n{requires}"
            )
    return py


def dry_run(py, requirements, tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--dry-run",
            "--no-index",
            "--disable-pip-version-check",
            "--report",
            str(report),
            "-r",
            requirements,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    installs = None
    if proc.returncode == 0:
        installs = {
            item["metadata"]["name"]: item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]
        }
    return proc, installs


def test_tpu_requirements_keep_the_runtime_jax(tpu_runtime_env, tmp_path):
    # Offline (--no-index): every requirement, with its dependencies, must be
    # met by what is installed; anything else would have to be downloaded.
    proc, installs = dry_run(tpu_runtime_env, TPU_REQUIREMENTS, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert installs == {}, installs
    # The control: requirements.txt would replace that jax.
    proc, installs = dry_run(tpu_runtime_env, REQUIREMENTS, tmp_path)
    assert proc.returncode != 0 or "jax" in installs
    assert "jax" in proc.stderr


def install_cell():
    with open(NOTEBOOK) as f:
        cells = json.load(f)["cells"]
    return next(
        "".join(c["source"])
        for c in cells
        if c["cell_type"] == "code" and "REPO_URL" in "".join(c["source"])
    )


def run_install_cell(tmp_path, monkeypatch, tpu, repo_url=None):
    """Runs the notebook's install cell as on Colab (cloning and pip faked)."""
    cell = install_cell()
    commands = []

    def fake_run(cmd, **kw):
        commands.append(cmd)
        if "git clone" in cmd:
            os.makedirs(tmp_path / "brt_keras" / "trainers")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    os.makedirs(tmp_path, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    for var in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "BRT_REPO_URL"):
        monkeypatch.delenv(var, raising=False)
    if tpu:
        monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v2-8")
    if repo_url:
        monkeypatch.setenv("BRT_REPO_URL", repo_url)
    exec(compile(cell, "install_cell", "exec"), {"__name__": "__main__"})
    return commands


def test_notebook_installs_tpu_requirements_on_tpu(tmp_path, monkeypatch):
    url = "https://github.com/someone/brt_keras"
    commands = run_install_cell(tmp_path / "tpu", monkeypatch, True, url)
    assert commands[0] == f"git clone -q {url} brt_keras"
    assert commands[1].endswith("pip install -q -r requirements-tpu.txt")
    commands = run_install_cell(tmp_path / "cpu", monkeypatch, False, url)
    assert commands[1].endswith("pip install -q -r requirements.txt")


def test_notebook_repo_url_is_a_marked_setting(tmp_path, monkeypatch):
    cell = install_cell()
    assert 'REPO_URL = "https://github.com/<you>/brt_keras"' in cell
    assert "# <- set this" in cell
    with pytest.raises(ValueError, match="set REPO_URL"):
        run_install_cell(tmp_path, monkeypatch, True)
