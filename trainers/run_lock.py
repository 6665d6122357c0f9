"""One writer per run directory: a lock file held for the run.

``<model_dir>/train.lock`` holds the holder's host, pid, start time and
command. It is created atomically (a complete temporary file hard-linked to
the lock's name, which fails if the name exists), so a reader never sees a
half-written lock. A second trainer on the same directory exits with status
2 naming the holder. A lock left by a process that is gone (same host, pid
not running: kill -9, a crash of the machine's process) is taken over with a
message. The lock is released when the run ends, by success, error,
preemption (SIGTERM/SIGINT) or ``sys.exit``.

On an object store (``gs://``) there is no hard link: the lock is written
when absent and read back, which narrows but does not close the window in
which two trainers started at the same moment both take it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from trainers import paths
from trainers.common import UsageError

LOCK_NAME = "train.lock"


class LockHeld(UsageError):
    """Another live trainer holds the run directory."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(holder):
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started "
        f"{holder.get('started')} ({holder.get('command', '?')})"
    )


class RunLock:
    """A context manager holding ``<directory>/<name>`` for a run.

    Args:
        directory: the run directory (created if missing).
        name: the lock file's name.
        log: prints a message (taking over a stale lock).
    """

    def __init__(self, directory, name=LOCK_NAME, log=None):
        self.directory = directory
        self.name = name
        self.path = paths.join(directory, name)
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.info = None

    def _read(self):
        if paths.is_remote(self.path) and not paths.exists(self.path):
            return None
        try:
            with paths.open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self):
        paths.makedirs(self.directory)
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv),
        }
        if paths.is_remote(self.path):
            return self._acquire_remote()
        tmp = f"{self.path}.{self.info['host']}.{self.info['pid']}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.info, f)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    return self
                except FileExistsError:
                    pass
                holder = self._read()
                if holder is None:  # released meanwhile
                    continue
                same_host = holder.get("host") == self.info["host"]
                pid = holder.get("pid")
                if same_host and isinstance(pid, int) and not _pid_alive(pid):
                    self.log(
                        f"note: taking over the stale lock {self.path} of "
                        f"{_describe(holder)}: that process is no longer running."
                    )
                    # Only remove the lock that was judged stale.
                    if self._read() == holder:
                        os.remove(self.path)
                    continue
                raise LockHeld(
                    f"{self.directory} is in use by another trainer: {_describe(holder)}. "
                    "Wait for it to finish or use another --model_dir. If that process is "
                    f"gone (e.g. its machine was restarted), delete {self.path}."
                )
            raise LockHeld(f"could not take {self.path}: it keeps changing hands.")
        finally:
            os.remove(tmp)

    def _acquire_remote(self):
        # Object stores: a create-only write (atomic on GCS), then a read
        # back, as a file system without preconditions may still overwrite.
        for _ in range(3):
            if paths.create_exclusive(self.path, json.dumps(self.info)):
                if self._read() != self.info:
                    raise LockHeld(
                        f"could not take {self.path}: another trainer took it."
                    )
                return self
            holder = self._read()
            if holder is None:  # released meanwhile
                continue
            same_host = holder.get("host") == self.info["host"]
            pid = holder.get("pid")
            if not (same_host and isinstance(pid, int) and not _pid_alive(pid)):
                raise LockHeld(
                    f"{self.directory} is in use by another trainer: {_describe(holder)}. "
                    "Wait for it to finish or use another --model_dir. If that process is "
                    f"gone, delete {self.path}."
                )
            self.log(
                f"note: taking over the stale lock {self.path} of {_describe(holder)}: "
                "that process is no longer running."
            )
            if self._read() == holder:
                paths.remove(self.path)
        raise LockHeld(f"could not take {self.path}: it keeps changing hands.")

    def release(self):
        if self.info is not None and self._read() == self.info:
            paths.remove(self.path)
        self.info = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
