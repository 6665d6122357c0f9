"""Every Python module and test file is named by a BUILD target, and
`bazel query //...` accepts the BUILD file when bazel is installed."""

import glob
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("brt_keras", "data", "trainers", "benchmarks")


def named_in_build():
    names = set()
    for build in glob.glob(os.path.join(REPO, "**", "BUILD"), recursive=True):
        if ".venv" in build:
            continue
        prefix = os.path.relpath(os.path.dirname(build), REPO)
        with open(build) as f:
            text = f.read()
        for name in re.findall(r'"([^"*]+\.py)"', text):
            names.add(os.path.normpath(os.path.join(prefix, name)))
    return names


def python_files():
    files = set()
    for package in PACKAGES:
        for path in glob.glob(
            os.path.join(REPO, package, "**", "*.py"), recursive=True
        ):
            files.add(os.path.relpath(path, REPO))
    for path in glob.glob(os.path.join(REPO, "tests", "*.py")):
        files.add(os.path.relpath(path, REPO))
    return files


def test_every_module_and_test_is_named_by_a_target():
    named = named_in_build()
    files = python_files()
    # benchmarks/ is checked once BUILD names any of it (its owner adds it).
    if not any(n.startswith("benchmarks/") for n in named):
        files = {
            f
            for f in files
            if not f.startswith(("benchmarks/", "tests/test_benchmarks"))
        }
    missing = sorted(files - named)
    assert not missing, f"add these to a BUILD target: {missing}"


def test_bazel_query(tmp_path):
    bazel = shutil.which("bazel") or shutil.which("bazel-bootstrap")
    if bazel is None:
        # CI installs Debian's bazel-bootstrap (.ci/run), so there it must run.
        assert not os.environ.get("CI"), "CI must install bazel-bootstrap"
        pytest.skip(
            "bazel is not installed on this machine: apt-get install "
            "bazel-bootstrap (CI does) to run the `bazel query //...` check"
        )
    workspace = REPO
    if not os.path.exists(os.path.join(REPO, "WORKSPACE")):
        # A throw-away workspace of links (the repository has no WORKSPACE yet);
        # .venv stays out (its TF headers carry BUILD files that need network).
        workspace = str(tmp_path / "ws")
        os.makedirs(workspace)
        open(os.path.join(workspace, "WORKSPACE"), "w").close()
        for name in (
            "BUILD",
            "brt_keras",
            "data",
            "trainers",
            "tests",
            "notebooks",
            "benchmarks",
        ):
            if os.path.exists(os.path.join(REPO, name)):
                os.symlink(os.path.join(REPO, name), os.path.join(workspace, name))
    out = subprocess.run(
        [bazel, f"--output_user_root={tmp_path}/bazel_root", "query", "//..."],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=600,
    )
    subprocess.run(
        [bazel, f"--output_user_root={tmp_path}/bazel_root", "shutdown"],
        cwd=workspace,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "//:train" in out.stdout and "//:test_trainers_binaries" in out.stdout
