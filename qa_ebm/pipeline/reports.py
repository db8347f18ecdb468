"""Writing an evaluation: results.json and results.md, and PNG figures, each replaced only when complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qa_ebm.io import write_json


def write_report(out: Path, result: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    tmp = out / ".results.md.tmp"
    tmp.write_text(markdown)
    tmp.replace(out / "results.md")


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as a PNG at `path` (written beside it, then renamed), and closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
