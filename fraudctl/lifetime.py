"""Child processes that end with their parent: ``Popen(..., preexec_fn=parent_death_signal())``.

Linux's ``PR_SET_PDEATHSIG`` (prctl(2)) makes the kernel send the child a signal when its parent dies, by any
means, SIGKILL included. A leaf module (stdlib only) so that every area that starts servers can use it.

Two kernel rules shape it:
- the signal fires when the *thread* that forked the child ends, not the process; a child started from a
  worker thread would be signalled when that thread finishes. So it is only set from the main thread (whose end
  is the process's end); callers starting children elsewhere need another guard (the rehearsal's watchdog).
- the setting is cleared in the child's own children (fork), so it covers direct children only; a server's
  worker processes rely on the server stopping them when it gets the signal.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from functools import cache
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@cache
def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child receive ``sig`` when this process dies; None where it cannot apply
    (not Linux, or not called from the main thread: see the module docstring)."""
    prctl = _prctl() if sys.platform.startswith("linux") else None
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    signum = ctypes.c_ulong(int(sig))
    zero = ctypes.c_ulong(0)

    def in_child() -> None:
        # Runs between fork and exec: only calls resolved in the parent, no imports, no allocation worth a lock.
        prctl(PR_SET_PDEATHSIG, signum, zero, zero, zero)
        if os.getppid() != parent:  # the parent died before prctl took effect: do what the kernel would have
            os.kill(os.getpid(), int(sig))

    return in_child
