"""``fraudctl bench rehearsal-stop``: how soon a stopped rehearsal has left nothing behind.

Runs ``fraudctl rehearse`` (same ``$FRAUD_HOME``: models trained once are reused), waits for its first analysis
step, sends it SIGKILL or SIGTERM, then polls /proc every 20 ms until every process of the run is gone, its
ports are free, and its run folder and temporary folder are removed. Per run and as median / max: seconds from
the signal to each mark, and the decision its report then records.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rehearsal.processes import listening_sockets, processes_of_run, scratch_folder

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
MARKS = ("ports_free", "processes_gone", "temporary_folder_removed", "run_folder_removed")
POLL_SECONDS = 0.02

log = logging.getLogger(__name__)


class BenchError(RuntimeError):
    """The rehearsal under measurement ended or stalled before its first analysis step."""


def _new_record(base: Path, before: set[Path]) -> Path | None:
    found = [p for p in base.glob("*/rehearsal.json") if p.parent not in before]
    return found[0] if found else None


def stop_once(
    sig: signal.Signals, home: Path, rehearse_args: list[str], *, start_timeout: float = 900.0
) -> dict[str, Any]:
    base = home / "reports" / "rehearsal"
    before = set(base.glob("*")) if base.exists() else set()
    stderr_path = home / "bench-rehearsal-stop.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fraudctl.cli", "rehearse", *rehearse_args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "FRAUD_HOME": str(home)},
            cwd=_PROJECT_ROOT,  # python -m imports from its working folder first: this checkout's code
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while "rehearse: step 1 (" not in stderr_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the rehearsal ended or stalled before step 1; its log: {stderr_path}")
            time.sleep(0.2)
        record_path = _new_record(base, before)
        if record_path is None:
            raise BenchError(f"no report folder appeared under {base}")
        run_id = json.loads(record_path.read_text())["run_id"]
        children = processes_of_run(run_id, with_ports=True)
        ports = {port for child in children for port in child.ports}
        sockets = {socket for child in children for socket in child.sockets}
        log.info(
            f"bench rehearsal-stop: sending {sig.name} to the rehearsal (pid {proc.pid}); its processes: "
            + ", ".join(child.describe() for child in children)
        )
        sent = time.monotonic()
        proc.send_signal(sig)
        seconds: dict[str, float] = {}
        checks = {
            "ports_free": lambda: not (listening_sockets().keys() & sockets),  # its sockets: ports get reused
            "processes_gone": lambda: not processes_of_run(run_id),
            "temporary_folder_removed": lambda: not scratch_folder(run_id).exists(),
            "run_folder_removed": lambda: not (home / "run" / run_id).exists(),
        }
        while len(seconds) < len(checks) and time.monotonic() - sent < 120:
            for mark, done in checks.items():
                if mark not in seconds and done():
                    seconds[mark] = round(time.monotonic() - sent, 3)
            time.sleep(POLL_SECONDS)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    report = json.loads(record_path.read_text())
    return {
        "signal": sig.name,
        "exit_code": proc.returncode,
        "processes": [child.to_json() for child in children],
        "ports": len(ports),
        "seconds": {mark: seconds.get(mark) for mark in MARKS},  # None: not reached within 120 s
        "report_decision": report["decision"],
        "report_steps": len(report["steps"]),
    }


def run_bench(sig: signal.Signals, runs: int, home: Path, rehearse_args: list[str]) -> dict[str, Any]:
    results = []
    for number in range(1, runs + 1):
        log.info(
            "bench rehearsal-stop: run %d/%d: fraudctl rehearse %s until its first analysis step",
            number, runs, " ".join(rehearse_args),
        )  # fmt: skip
        results.append(stop_once(sig, home, rehearse_args))
    summary = {}
    for mark in MARKS:
        values = [r["seconds"][mark] for r in results if r["seconds"][mark] is not None]
        summary[mark] = {
            "median": statistics.median(values) if values else None,
            "max": max(values) if values else None,
            "not_reached": len(results) - len(values),
        }
    return {"signal": sig.name, "runs": results, "seconds": summary}
