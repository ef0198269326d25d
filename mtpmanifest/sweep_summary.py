"""A sweep's summary from its jobs' result.json files: summary.md (an aligned table), summary.csv
and summary.png (file size against MTP error and acceptance), and the sweep's exit code.
Plain files and data, no hydra: sweep.py's callback calls it in the driver process."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from .errors import VerificationError
from .report import size

log = logging.getLogger("mtpmanifest")

RESULT = "result.json"
SUMMARY_FILES = ("summary.md", "summary.csv", "summary.png")
INTERNAL_ERROR = 70


def exit_code(records: list[dict[str, Any]]) -> int:
    """A sweep's exit code: 0 if every job succeeded, 4 if any job failed verification (a file
    was written but is wrong: the result CI most needs to see), else the first failed job's code."""
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return 0
    codes = [r.get("exit_code") or INTERNAL_ERROR for r in failed]
    return VerificationError.exit_code if VerificationError.exit_code in codes else codes[0]


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job's result.json, in job order; a numbered job dir without one is a failed job."""
    records = []
    for job_dir in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = job_dir / RESULT
        if path.is_file():
            try:
                records.append(json.loads(path.read_text()))
                continue
            except ValueError as exc:
                error = f"{path}: unreadable: {exc}"
        elif job_dir.name.isdigit():
            error = f"{path}: missing (the job did not finish)"
        else:
            continue
        records.append({"job": {"num": int(job_dir.name) if job_dir.name.isdigit() else None, "dir": str(job_dir)},
                        "status": "failed", "exit_code": INTERNAL_ERROR, "error": error, "preset": None})
    nums = [(r.get("job") or {}).get("num") for r in records]  # dir names sort "10" before "2"
    return [r for _, r in sorted(zip(nums, records), key=lambda p: (p[0] is None, p[0] or 0))]


def _stat(record: dict[str, Any], role: str) -> float | None:
    return ((record.get("numeric_stats") or {}).get(role) or {}).get("max_rel_rmse")


def _bpw(record: dict[str, Any], role: str) -> float | None:
    return (record.get("bits_per_weight") or {}).get(role)


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _acceptance(record: dict[str, Any], key: str = "output") -> float | None:
    """The first MTP layer's draft acceptance of the written file (key="output") or its retention;
    result.json holds report.json's mtp_acceptance section (older records: a bare number)."""
    value = record.get("mtp_acceptance")
    if isinstance(value, dict):
        values = value.get(key) or [None]
        return values[0] if isinstance(values[0], (int, float)) else None
    return value if key == "output" and isinstance(value, (int, float)) else None


def _acceptance_cell(record: dict[str, Any]) -> str:
    kept = _acceptance(record, "retention")
    return _fmt(_acceptance(record), ".3f") + ("" if kept is None else f" ({kept:.1%})")


HEADER = ("job", "preset", "status", "size", "bpw trunk", "bpw MTP", "max rel RMSE trunk", "max rel RMSE MTP",
          "MTP acceptance", "error")


def table_rows(records: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for r in records:
        num = (r.get("job") or {}).get("num")
        rows.append((
            "?" if num is None else str(num), r.get("preset") or "?", r.get("status", "?"),
            "—" if r.get("file_size") is None else size(r["file_size"]),
            _fmt(_bpw(r, "trunk"), ".2f"), _fmt(_bpw(r, "mtp"), ".2f"),
            _fmt(_stat(r, "trunk"), ".2e"), _fmt(_stat(r, "mtp"), ".2e"),
            _acceptance_cell(r),
            (r.get("error") or "").replace("|", "\\|"),
        ))
    return rows


def markdown_table(records: list[dict[str, Any]]) -> str:
    """An aligned Markdown table (numbers right-aligned), readable as plain text too."""
    rows = table_rows(records)
    widths = [max(len(str(c)) for c in col) for col in zip(HEADER, *rows)]
    right = {3, 4, 5, 6, 7, 8}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(HEADER), rule, *(line(r) for r in rows)])


CSV_FIELDS = ("job", "preset", "status", "exit_code", "file_size", "bpw_trunk", "bpw_mtp", "max_rel_rmse_trunk",
              "mean_rel_rmse_trunk", "max_rel_rmse_mtp", "mean_rel_rmse_mtp", "max_rel_rmse_shared", "mtp_acceptance",
              "mtp_retention", "error", "overrides", "job_dir")


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for r in records:
            job = r.get("job") or {}
            stats = r.get("numeric_stats") or {}
            writer.writerow({
                "job": job.get("num"), "preset": r.get("preset"), "status": r.get("status"),
                "exit_code": r.get("exit_code"), "file_size": r.get("file_size"),
                "bpw_trunk": _bpw(r, "trunk"), "bpw_mtp": _bpw(r, "mtp"),
                "max_rel_rmse_trunk": _stat(r, "trunk"), "mean_rel_rmse_trunk": (stats.get("trunk") or {}).get("mean_rel_rmse"),
                "max_rel_rmse_mtp": _stat(r, "mtp"), "mean_rel_rmse_mtp": (stats.get("mtp") or {}).get("mean_rel_rmse"),
                "max_rel_rmse_shared": _stat(r, "shared"), "mtp_acceptance": _acceptance(r),
                "mtp_retention": _acceptance(r, "retention"),
                "error": r.get("error"), "overrides": " ".join(job.get("overrides") or []), "job_dir": job.get("dir"),
            })


def write_plot(path: Path, records: list[dict[str, Any]]) -> bool:
    """File size against max MTP rel RMSE (and against MTP acceptance once measured), one point
    per successful job, labelled by preset. False, with one warning, without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("summary.png skipped: matplotlib is not installed (pip install 'mtpmanifest[sweep]')")
        return False
    ok = [r for r in records if r.get("status") == "ok" and r.get("file_size") is not None]
    panels = [("max MTP rel RMSE", lambda r: _stat(r, "mtp"))]
    if any(_acceptance(r) is not None for r in ok):
        panels.append(("MTP acceptance", _acceptance))
    fig = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (label, value) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        points = [(r["file_size"] / 2**20, value(r), r.get("preset") or "?") for r in ok
                  if isinstance(value(r), (int, float))]
        for x, y, name in points:
            ax.scatter([x], [y], color="tab:blue")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
        if points and all(y > 0 for _, y, _ in points) and label.endswith("RMSE"):
            ax.set_yscale("log")
        if not points:
            ax.text(0.5, 0.5, "no successful job", ha="center", va="center", transform=ax.transAxes)
        ax.margins(x=0.15, y=0.12)
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    failed = len(records) - len(ok)
    fig.suptitle(f"mtpmanifest sweep: {len(ok)} job(s)" + (f", {failed} failed (see summary.md)" if failed else ""))
    fig.savefig(path, dpi=100)
    return True


def write_summary(sweep_dir: Path, records: list[dict[str, Any]]) -> str:
    """summary.csv, summary.png and summary.md in sweep_dir; returns the Markdown table."""
    sweep_dir = Path(sweep_dir)
    table = markdown_table(records)
    write_csv(sweep_dir / "summary.csv", records)
    plotted = write_plot(sweep_dir / "summary.png", records)
    failed = sum(r.get("status") != "ok" for r in records)
    lines = ["# mtpmanifest sweep", "", f"{len(records)} job(s), {failed} failed, exit code {exit_code(records)}"
             f" — `{sweep_dir}`", "", table, ""]
    if plotted:
        lines += ["![file size against max MTP rel RMSE](summary.png)", ""]
    (sweep_dir / "summary.md").write_text("\n".join(lines))
    return table
