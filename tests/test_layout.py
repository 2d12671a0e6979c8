"""The package boundaries (docs/STYLE.md, "Layout"): only infra/ is the Pulumi program.

Code that runs in pods or on the CLI (ops/, rollout/, serving/, model/, rehearsal/) imports no Pulumi SDK
(the tools and serving images carry none), and the rollout analysis imports nothing of the program.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("ops", "rollout", "serving", "model", "rehearsal")
# Blocked for the runtime packages: importing any of these raises ImportError in the child process.
PULUMI_MODULES = ("pulumi", "pulumi_kubernetes", "pulumi_random", "pulumi_docker")


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__main__.py"
    )


def _import_in_child(modules: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` one by one in a fresh interpreter with the Pulumi SDK blocked; per module, the
    infra modules it pulled in (or the import error)."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {PULUMI_MODULES!r}: sys.modules[name] = None\n"
        "seen = {}\n"
        f"for module in {modules!r}:\n"
        "    before = set(sys.modules)\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "    except ImportError as exc:\n"
        "        seen[module] = ['ImportError: ' + str(exc)]\n"
        "        continue\n"
        "    seen[module] = sorted(m for m in set(sys.modules) - before if m == 'infra' or m.startswith('infra.'))\n"
        "print(json.dumps(seen))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runtime_packages_import_without_the_pulumi_sdk() -> None:
    modules = [m for package in RUNTIME_PACKAGES for m in _modules(package)]
    failures = {m: r for m, r in _import_in_child(modules).items() if r and r[0].startswith("ImportError")}
    assert not failures, failures


def test_the_rollout_analysis_imports_nothing_of_the_pulumi_program() -> None:
    pulled = _import_in_child(_modules("rollout"))
    assert all(not infra for infra in pulled.values()), pulled


def test_infra_holds_only_the_pulumi_program() -> None:
    """No service or CLI entry point lives in infra/: nothing there starts an HTTP server or parses argv."""
    offenders = []
    for path in (ROOT / "infra").rglob("*.py"):
        text = path.read_text()
        for marker in ("http.server", "uvicorn.run", "ThreadingHTTPServer", "if __name__ == \"__main__\""):
            if marker in text:
                offenders.append(f"{path.relative_to(ROOT)}: {marker}")
    assert not offenders, offenders
