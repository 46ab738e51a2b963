"""The rows and table of ``fused-mup check``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CheckReport", "CheckRow"]


@dataclass
class CheckRow:
    """One line of the check: a case at one dtype, its worst errors and the allowed ones."""

    case: str
    dtype: str
    status: str = "FAIL"  # "pass", "FAIL" or "skip"
    rel: float = math.nan
    abs: float = math.nan
    tol_rel: float = math.nan
    tol_abs: float = math.nan
    note: str = ""


@dataclass
class CheckReport:
    """All rows plus what ran them."""

    device: str
    backend: str
    versions: dict[str, str | None]
    rows: list[CheckRow] = field(default_factory=list)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> rel, abs

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.status != "FAIL" for r in self.rows)

    def table(self) -> str:
        head = ("case", "dtype", "result", "rel RMS err", "allowed", "max abs err", "allowed")
        lines = [head]
        for r in self.rows:
            lines.append(
                (
                    r.case,
                    r.dtype,
                    r.status,
                    _fmt(r.rel),
                    _fmt(r.tol_rel),
                    _fmt(r.abs),
                    _fmt(r.tol_abs),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        notes = [f"  {r.case} [{r.dtype}]: {r.note}" for r in self.rows if r.note]
        verdict = "PASSED" if self.passed else "FAILED"
        count = {k: sum(r.status == k for r in self.rows) for k in ("pass", "FAIL", "skip")}
        summary = (
            f"{verdict}: {count['pass']} passed, {count['FAIL']} failed, {count['skip']} skipped"
        )
        return "\n".join([*out, *(["notes:", *notes] if notes else []), summary])

    def to_json(self) -> dict[str, Any]:
        rows = [
            {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(r).items()
            }
            for r in self.rows
        ]
        return {
            "device": self.device,
            "backend": self.backend,
            "versions": self.versions,
            "tolerances": self.tolerances,
            "passed": self.passed,
            "rows": rows,
        }


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2e}"
