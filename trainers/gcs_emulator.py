"""A local Google Cloud Storage emulator for the tests (PyPI
``gcp-storage-emulator``), run as a subprocess on 127.0.0.1 and a free port.

    with gcs_emulator.running(bucket="runs") as env:
        # env: the variables that point gcsfs, epath and tensorstore at it
        subprocess.run([...], env={**os.environ, **env})
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(host):
    """What a client process needs to talk to the emulator at ``host``."""
    return {
        "STORAGE_EMULATOR_HOST": host,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "EPATH_USE_TF": "false",
        "TENSORSTORE_GCS_HTTP_URL": host,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }


@contextlib.contextmanager
def running(bucket="runs", timeout=30.0):
    """Starts the emulator with ``bucket``; yields the client environment
    (also set in ``os.environ`` while it runs) and stops it on exit."""
    port = _free_port()
    exe = shutil.which("gcp-storage-emulator") or os.path.join(
        os.path.dirname(sys.executable), "gcp-storage-emulator"
    )
    proc = subprocess.Popen(
        [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
        + ["--default-bucket", bucket],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"the GCS emulator did not start on {host} "
                        f"(exit status {proc.poll()})"
                    ) from None
                time.sleep(0.2)
        env = emulator_env(host)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
