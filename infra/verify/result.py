"""What a check found (``CheckResult``) and the table ``fraudctl verify`` prints of them."""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CheckResult:
    name: str
    title: str
    checked: int = 0
    failures: list[str] = field(default_factory=list)
    waived: int = 0  # findings an explicit waiver covers (hardening)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        if message not in self.failures:  # a query naming a metric twice fails once
            self.failures.append(message)



def counts(results: list[CheckResult]) -> Counter[str]:
    return Counter("pass" if r.ok else "fail" for r in results)


def format_table(region: str, results: list[CheckResult], *, limit: int = 3, width: int = 118) -> str:
    """One row per check (name, status, how many things it looked at), its first failures wrapped below."""
    rows = [f"region {region}", f"  {'check':<17} {'status':<6} {'count':>6}  what"]
    for r in results:
        waived = f" ({r.waived} waived, reasons in infra/verify/waivers.py)" if r.waived else ""
        rows.append(f"  {r.name:<17} {'pass' if r.ok else 'FAIL':<6} {r.checked:>6}  {r.title}{waived}")
        for failure in r.failures[:limit]:
            lines = textwrap.wrap(failure, width=width - 6, break_long_words=False, break_on_hyphens=False)
            rows += [f"      {'- ' if i == 0 else '  '}{line}" for i, line in enumerate(lines)]
        if len(r.failures) > limit:
            rows.append(f"      ... and {len(r.failures) - limit} more (--all-failures lists them)")
    return "\n".join(rows)
