"""The package boundaries (docs/STYLE.md, "Layout"): only infra/ is the Pulumi program.

Code that runs in pods or on the CLI (ops/, rollout/, serving/, model/, rehearsal/) imports no Pulumi SDK
(the tools and serving images carry none), the rollout analysis imports nothing of the program, and ops/
uses only the program's config (to validate a proposed stack config as the program would).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("ops", "rollout", "serving", "model", "rehearsal")
# Blocked for the runtime packages: importing any of these raises ImportError in the child process.
PULUMI_MODULES = ("pulumi", "pulumi_kubernetes", "pulumi_random", "pulumi_docker", "pulumi_tls")


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


def _infra_imports(path: Path) -> set[str]:
    """Every infra module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from infra import pipeline` imports the module infra.pipeline
            names = [f"infra.{a.name}" for a in node.names] if node.module == "infra" else [node.module]
        else:
            continue
        found |= {name for name in names if name == "infra" or name.startswith("infra.")}
    return found


def _is_config(module: str) -> bool:
    return module in ("infra", "infra.config") or module.startswith("infra.config.")


def test_ops_uses_nothing_of_the_pulumi_program_but_its_config() -> None:
    pulled = {m for modules in _import_in_child(_modules("ops")).values() for m in modules}
    assert all(_is_config(m) for m in pulled), pulled
    written = {
        str(path.relative_to(ROOT)): sorted(m for m in _infra_imports(path) if not _is_config(m))
        for path in (ROOT / "ops").rglob("*.py")
    }
    assert not {path: modules for path, modules in written.items() if modules}


def test_the_import_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from infra.config import X\ndef f():\n    from infra import pipeline\n    import infra.k8s\n")
    assert _infra_imports(sample) == {"infra.config", "infra.pipeline", "infra.k8s"}


def test_infra_holds_only_the_pulumi_program() -> None:
    """No service or CLI entry point lives in infra/: nothing there starts an HTTP server or parses argv."""
    offenders = []
    for path in (ROOT / "infra").rglob("*.py"):
        text = path.read_text()
        for marker in ("http.server", "uvicorn.run", "ThreadingHTTPServer", 'if __name__ == "__main__"'):
            if marker in text:
                offenders.append(f"{path.relative_to(ROOT)}: {marker}")
    assert not offenders, offenders
