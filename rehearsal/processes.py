"""The lifetime of a rehearsal's child processes: nothing it starts outlives it, whatever way it ends.

Three lines of defence, each enough for the case it covers:

1. The rehearsal stops its children itself on every path it survives (decision, error, Ctrl-C, SIGTERM):
   ``StopSignals`` turns the stop signals into one exception (``Interrupted``), raised only while the work
   runs, so stopping and writing the report are never cut short; ``RunScope`` then stops whatever the run
   started and is still running.
2. When the rehearsal is killed outright (SIGKILL, the OOM killer), its direct children get SIGTERM from the
   kernel (``fraudctl.lifetime.parent_death_signal``), and a small watchdog process, which sees the end of its
   pipe from the rehearsal, stops every process of the run (the servers' own workers too) and removes the
   run's temporary folder.
3. When the watchdog is gone as well, the next rehearsal in the same ``$FRAUD_HOME`` does the same for every
   run whose lock is no longer held (``reap_abandoned_runs``).

Which processes belong to a run: every process a run starts inherits ``FRAUD_REHEARSAL_RUN=<run id>`` in its
environment, and ``/proc/<pid>/environ`` shows the environment a process started with. A process is only
ever signalled if it carries the run's id and still has the start time it was found with, so a pid reused by
an unrelated process is never touched, and a server's own worker processes are found with it.

Per run, ``$FRAUD_HOME/run/<run id>/`` holds ``lock`` (flock-ed by the rehearsal for its whole life: the
kernel frees it when the process dies, so a stale lock is recognised without trusting any pid) and
``owner.json`` (pid, start time, boot id, report folder, temporary folder) to say what to clean up.

Stdlib only at import: the watchdog runs ``python -m rehearsal.processes watch <run folder>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fraudctl.files import write_json

RUN_ENV = "FRAUD_REHEARSAL_RUN"
SCRATCH_PREFIX = "fraud-rehearsal-"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_TCP_LISTEN = "0A"  # /proc/net/tcp state column

log = logging.getLogger(__name__)


# -- what /proc says about a process ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChildProcess:
    """A process of a run, as found in /proc. ``start`` (clock ticks after boot) with ``pid`` names it for good."""

    pid: int
    start: int
    command: str
    ports: tuple[int, ...] = ()
    # The inodes of the sockets it listens on: a port freed and bound again by another process is another socket.
    sockets: tuple[str, ...] = ()

    def describe(self) -> str:
        ports = f" on port {', '.join(map(str, self.ports))}" if self.ports else ""
        return f"{self.command} (pid {self.pid}){ports}"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "command": self.command, "ports": list(self.ports)}


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc/<pid>/stat; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def alive(child: ChildProcess) -> bool:
    """Still running (a zombie is not) and still the same process (the pid was not reused)."""
    stat = _stat(child.pid)
    return stat is not None and stat[0] != "Z" and stat[1] == child.start


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    name = Path(words[0]).name
    # "python -m serving.server" says what it is; a binary's flags (paths) only make the line long.
    return " ".join([name, *words[1:3]]) if len(words) > 2 and words[1] == "-m" else name


def listening_sockets() -> dict[str, int]:
    """Socket inode -> port of every TCP socket in LISTEN state (/proc/net/tcp and tcp6).

    Whether a process's ports were freed is a question about its sockets (``ChildProcess.sockets``): once free,
    a port number may be bound again at any moment by any other process on the machine."""
    inode_port: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == _TCP_LISTEN:
                    inode_port[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
    return inode_port


def _listening_sockets_of(pids: Iterable[int]) -> dict[int, dict[str, int]]:
    """The TCP sockets each process listens on (inode -> port): its fds matched against /proc/net/tcp{,6}."""
    inode_port = listening_sockets()
    found: dict[int, dict[str, int]] = {}
    for pid in pids:
        sockets: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inode_port:
                        sockets[target[8:-1]] = inode_port[target[8:-1]]
        found[pid] = sockets
    return found


def processes_of_run(run_id: str, *, with_ports: bool = False) -> list[ChildProcess]:
    """Every live process (but this one) that started with ``FRAUD_REHEARSAL_RUN=<run_id>``."""
    marker = f"{RUN_ENV}={run_id}".encode()
    me = os.getpid()
    found: list[ChildProcess] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if marker not in environ.split(b"\0"):
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] != "Z":
            found.append(ChildProcess(int(entry.name), stat[1], _command(int(entry.name))))
    if with_ports and found:
        held = _listening_sockets_of(child.pid for child in found)
        found = [
            ChildProcess(c.pid, c.start, c.command, ports=tuple(sorted(set(sockets.values()))), sockets=tuple(sockets))
            for c in found
            for sockets in [held[c.pid]]
        ]
    return sorted(found, key=lambda child: child.pid)


def _signal(child: ChildProcess, sig: int) -> None:
    if alive(child):  # checked right before: never a reused pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child.pid, sig)


def _wait_gone(children: list[ChildProcess], seconds: float) -> list[ChildProcess]:
    deadline = time.monotonic() + seconds
    while True:
        left = [child for child in children if alive(child)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_processes(children: list[ChildProcess], grace_seconds: float = 10.0) -> list[ChildProcess]:
    """SIGTERM, then SIGKILL for those still running after ``grace_seconds``; returns those that would not go."""
    for child in children:
        _signal(child, signal.SIGTERM)
    left = _wait_gone(children, grace_seconds)
    for child in left:
        _signal(child, signal.SIGKILL)
    return _wait_gone(left, 5.0)


# -- signals ----------------------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) arrived while the rehearsal was working."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as one ``Interrupted`` exception, raised at most once and only inside
    ``interruptible()``; a signal that comes before is raised on entering it, one that comes after (while
    children are stopped and the report is written) is only noted and logged, so stopping is never cut short.

        with StopSignals() as signals:
            try:
                with signals.interruptible():
                    work()
            except Interrupted as stop:
                ...
            clean_up()  # a second Ctrl-C here is noted, not raised

    Handlers are installed from the main thread only (Python delivers signals there) and restored on exit.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._state = "before"  # before -> armed -> after
        self._pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = "after"
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def first(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._state == "armed":
            self._state = "after"
            raise Interrupted(signum)
        if self._state == "before":
            self._pending = self._pending or signum
            return
        log.info(f"rehearse: {signal.Signals(signum).name} received: already stopping, finishing the report first")

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self._pending is not None:
            self._state = "after"
            raise Interrupted(self._pending)
        self._state = "armed"
        try:
            yield
        finally:
            self._state = "after"


# -- one run's processes and scratch space ----------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def scratch_folder(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{run_id}"


@dataclass
class RunScope:
    """The processes and temporary files of one rehearsal.

    While entered: every child process inherits ``FRAUD_REHEARSAL_RUN``; temporary folders (``tempfile`` here,
    ``TMPDIR`` in children: the servers' work folders, Prometheus's data) are made under one scratch folder;
    the run's lock is held and its watchdog waits. On exit, whatever the way out, every process of the run still
    running is stopped (``stopped`` lists them: the rig should have stopped them all) and the scratch folder
    and run folder are removed.
    """

    home: Path
    run_id: str
    report_folder: Path
    grace_seconds: float = 10.0
    watchdog: bool = True
    stopped: list[ChildProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = self.home / "run" / self.run_id
        self.scratch = scratch_folder(self.run_id)
        self._lock: Any = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_tempdir: str | None = None
        self._building: Path | None = None
        self._entered = False

    def __enter__(self) -> RunScope:
        try:
            self._enter()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _enter(self) -> None:
        # Built under a hidden name, lock held, then renamed: a reaper never sees a run folder without its lock.
        building = self.folder.with_name(f".{self.run_id}.new")
        building.mkdir(parents=True)
        self._building = building
        self._lock = open(building / "lock", "w")  # noqa: SIM115 - held for the run's whole life
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.scratch.mkdir(mode=0o700)
        me = _stat(os.getpid())
        write_json(
            building / "owner.json",
            {
                "run_id": self.run_id,
                "pid": os.getpid(),
                "start": me[1] if me else None,
                "boot_id": boot_id(),
                "report_folder": str(self.report_folder),
                "scratch": str(self.scratch),
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            sort_keys=False,
        )
        os.rename(building, self.folder)
        if self.watchdog:
            self._watchdog = _start_watchdog(self.folder)
        for key, value in ((RUN_ENV, self.run_id), ("TMPDIR", str(self.scratch))):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(self.scratch)
        self._entered = True

    def children(self, *, with_ports: bool = True) -> list[ChildProcess]:
        """The run's processes running now."""
        return processes_of_run(self.run_id, with_ports=with_ports)

    def terminate(self) -> list[ChildProcess]:
        """SIGTERM to every process of the run at once, without waiting: servers shut down in parallel, and
        whoever stops them one by one afterwards (the rig) only waits for the slowest."""
        children = self.children(with_ports=False)
        log.debug("rehearse: SIGTERM to %s", ", ".join(c.describe() for c in children) or "no process")
        for child in children:
            _signal(child, signal.SIGTERM)
        return children

    def __exit__(self, *exc: object) -> None:
        try:
            leftovers = self.children()
            if leftovers:
                log.warning(f"rehearse: stopping what is still running: {', '.join(c.describe() for c in leftovers)}")
                stuck = stop_processes(leftovers, self.grace_seconds)
                if stuck:
                    log.error(f"rehearse: could not stop: {', '.join(c.describe() for c in stuck)}")
            self.stopped = leftovers
        finally:
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if self._entered:
                tempfile.tempdir = self._saved_tempdir
            self._saved_env.clear()
            self._entered = False
            shutil.rmtree(self.scratch, ignore_errors=True)
            for folder in (self.folder, self._building):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            if self._lock is not None:
                self._lock.close()
            self._stop_watchdog()

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        assert watchdog.stdin is not None
        with contextlib.suppress(OSError):  # a watchdog that died early has closed its end already
            watchdog.stdin.close()  # its cue: the run folder is gone, so it has nothing to do
        try:
            watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


def _start_watchdog(run_folder: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != RUN_ENV}  # not a process of the run: reapers skip it
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "rehearsal.processes", "watch", str(run_folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd="/",
        start_new_session=True,  # Ctrl-C in the terminal and a kill of the rehearsal's group do not reach it
    )


# -- cleaning up after a run that could not ---------------------------------------------------------------


@dataclass(frozen=True)
class Reaped:
    run_id: str
    owner: dict[str, Any]
    stopped: list[ChildProcess]
    stuck: list[ChildProcess]
    report_marked: bool

    def describe(self) -> str:
        pid = self.owner.get("pid", "?")
        parts = [f"a previous rehearsal (run {self.run_id}, pid {pid}) ended without cleaning up"]
        if self.stopped:
            parts.append(f"stopped {len(self.stopped)}: {', '.join(c.describe() for c in self.stopped)}")
        if self.stuck:
            parts.append(f"could not stop {', '.join(c.describe() for c in self.stuck)}")
        parts.append("removed its temporary folder")
        if self.report_marked:
            parts.append(f"marked its report {self.owner.get('report_folder')} as killed")
        return "; ".join(parts)


def _try_lock(path: Path, wait_seconds: float = 0.0) -> Any:
    """The open, flock-ed lock file, or None while another process holds it (or it cannot be opened)."""
    try:  # never created here: a run folder without its lock is not taken for a dead one
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CLOEXEC), "r+")
    except OSError:
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)


def _reap(folder: Path, grace_seconds: float, mark_report: Callable[[Path, str], bool]) -> Reaped:
    """Stop a dead run's processes, remove its scratch and run folders; the caller holds its lock."""
    run_id = folder.name.removeprefix(".").removesuffix(".new")
    owner = _read_json(folder / "owner.json") or {}
    if owner.get("boot_id") and owner["boot_id"] != boot_id():
        leftovers: list[ChildProcess] = []  # the machine restarted since: none of its processes can remain
    else:
        leftovers = processes_of_run(run_id, with_ports=True)
    stuck = stop_processes(leftovers, grace_seconds) if leftovers else []
    # Only ever a folder named after the run's id: a damaged owner.json cannot point the removal elsewhere.
    scratches = {scratch_folder(run_id)}
    recorded = owner.get("scratch")
    if isinstance(recorded, str) and Path(recorded).name == f"{SCRATCH_PREFIX}{run_id}":
        scratches.add(Path(recorded))
    for scratch in scratches:
        shutil.rmtree(scratch, ignore_errors=True)
    marked = False
    report = owner.get("report_folder")
    if isinstance(report, str) and report:
        reason = (
            f"the rehearsal process (pid {owner.get('pid', '?')}) was killed before it could finish "
            "(SIGKILL, the OOM killer or a crash); the steps below are those completed before"
        )
        with contextlib.suppress(OSError):
            marked = mark_report(Path(report), reason)
    shutil.rmtree(folder, ignore_errors=True)
    return Reaped(run_id, owner, leftovers, stuck, marked)


def _mark_report_killed(folder: Path, reason: str) -> bool:
    from rehearsal.report import mark_killed  # imported only when there is a report to mark

    return mark_killed(folder, reason)


def reap_abandoned_runs(
    home: Path,
    *,
    grace_seconds: float = 10.0,
    mark_report: Callable[[Path, str], bool] = _mark_report_killed,
) -> list[Reaped]:
    """Clean up after every run in ``home`` whose rehearsal died without doing it (its lock is free)."""
    runs = home / "run"
    try:
        entries = sorted(runs.iterdir())
    except FileNotFoundError:
        return []
    reaped = []
    for folder in entries:
        if not folder.is_dir():
            continue
        lock = _try_lock(folder / "lock")
        if lock is None:
            if not (folder / "lock").exists() and not folder.name.startswith("."):
                log.warning(
                    "rehearse: %s: a run folder without its lock file; remove it if no rehearsal is running", folder
                )
            continue  # a live rehearsal holds it
        try:
            if folder.exists():
                result = _reap(folder, grace_seconds, mark_report)
                log.info(f"rehearse: {result.describe()}")
                reaped.append(result)
        finally:
            lock.close()
    return reaped


def watch(run_folder: Path) -> int:
    """The watchdog: wait for the rehearsal's end (EOF on stdin), then clean up if it could not."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    if not run_folder.exists():
        return 0  # the rehearsal cleaned up itself
    lock = _try_lock(run_folder / "lock", wait_seconds=5.0)  # the dying owner's lock is freed a moment later
    if lock is None:
        return 0  # the owner is alive: not ours to clean
    try:
        owner = _read_json(run_folder / "owner.json") or {}
        result = _reap(run_folder, 10.0, _mark_report_killed)
        report = owner.get("report_folder")
        if isinstance(report, str) and Path(report).is_dir():
            with contextlib.suppress(OSError), open(Path(report) / "watchdog.log", "a") as out:
                out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} watchdog: {result.describe()}\n")
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "watch":
        sys.exit(watch(Path(sys.argv[2])))
    print("usage: python -m rehearsal.processes watch <run folder>", file=sys.stderr)
    sys.exit(2)
