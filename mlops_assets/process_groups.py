"""Stopping a child process started in its own session, with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL to what is left after ``timeout`` seconds.

    ``proc`` must lead its group (``start_new_session=True``). A process that has exited is not
    signalled: its pid may belong to another process by now.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    # Whatever is left of the group (children it started), and the leader if it did not stop.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
