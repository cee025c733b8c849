"""Bar chart of a bench/run.py results file: images/s and peak RSS, per pair and scenario.

    python bench/plot.py [bench/results/<timestamp>.json] [-o bench/benchmark.png]

Without a file, the newest full run in bench/results/ is drawn. matplotlib only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from run import size_label  # bench/ is on sys.path when run as a script

BENCH = Path(__file__).resolve().parent
MIB = 1 << 20
# The baselines in their own colours; dimse green, darker when on both sides.
COLOURS = {
    "dcmtk": "#4c72b0",
    "pynetdicom": "#dd8452",
    "dimse": "#2e8b57",
    "cross": "#8fd19e",
    "diagnostic": "#c7c7c7",
}


def colour(pair: dict[str, Any]) -> str:
    """Which family a pair belongs to, as a bar colour."""
    if pair.get("no_fsync"):
        return COLOURS["diagnostic"]
    sides = {pair["sender"], pair["receiver"]}
    if len(sides) == 1:
        return COLOURS[pair["sender"]]
    return COLOURS["cross"] if "dimse" in sides else "#888888"


def newest(results: Path) -> Path:
    """The latest full run, else the latest run of any kind."""
    files = sorted(results.glob("*.json"))
    full = [f for f in files if not f.stem.endswith("-quick")]
    if not files:
        raise SystemExit(f"no results in {results}; run bench/run.py first")
    return (full or files)[-1]


def plot(source: Path, target: Path) -> Path:
    """Draw `source` into `target` (PNG): a row per scenario, images/s | peak RSS."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise SystemExit("matplotlib is missing: pip install -r bench/requirements.txt") from None

    document: dict[str, Any] = json.loads(source.read_text())
    pairs = document["pairs"]
    scenarios = document["scenarios"]
    facts = document["machine"]
    figure, axes = plt.subplots(
        len(scenarios), 2, figsize=(13, 3.6 * len(scenarios) + 0.9), squeeze=False
    )
    labels = [p["label"] for p in pairs]
    positions = list(range(len(pairs)))
    for row, scenario in enumerate(scenarios):
        table = document["summary"][scenario["name"]]
        rows = [table.get(p["key"], {}) for p in pairs]
        colours = [colour(p) for p in pairs]
        each = size_label(scenario["bytes"] / scenario["count"])
        title = f"{scenario['name']}: {scenario['count']} x {each}"

        speed = axes[row][0]
        values = [r.get("images_per_s", 0.0) for r in rows]
        bars = speed.barh(positions, values, color=colours)
        speed.bar_label(
            bars,
            labels=[
                f"{v:.1f}  (x{r['vs_dcmtk']['images_per_s']:.2f} dcmtk)" if v else "failed"
                for v, r in zip(values, rows, strict=True)
            ],
            padding=3,
            fontsize=8,
        )
        speed.set_title(f"{title}: images/s (higher is better)", fontsize=10)
        speed.set_xlim(0, max(values or [1]) * 1.7)

        memory = axes[row][1]
        width = 0.4
        receiver = [r.get("receiver_rss", 0) / MIB for r in rows]
        sender = [r.get("sender_rss", 0) / MIB for r in rows]
        recv_bars = memory.barh(
            [p - width / 2 for p in positions], receiver, width, color="#8172b3", label="receiver"
        )
        send_bars = memory.barh(
            [p + width / 2 for p in positions], sender, width, color="#c0c0c0", label="sender"
        )
        memory.bar_label(recv_bars, fmt="%.0f", padding=2, fontsize=7)
        memory.bar_label(send_bars, fmt="%.0f", padding=2, fontsize=7)
        memory.set_title(f"{title}: peak RSS, MiB (lower is better)", fontsize=10)
        memory.set_xlim(0, max(receiver + sender + [1]) * 1.15)
        memory.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)

        for axis in (speed, memory):
            axis.set_yticks(positions, labels, fontsize=9)
            axis.invert_yaxis()
            axis.grid(axis="x", alpha=0.3)
            axis.set_axisbelow(True)

    figure.suptitle(
        f"C-STORE over 127.0.0.1, median of {document['repeat']} runs - "
        f"{facts['cpus']} CPUs, Python {facts['python']}, {facts['dcmtk']}, "
        f"pynetdicom {facts['pynetdicom']}, dimse {facts['dimse_commit']} "
        f"({document['started'][:10]})",
        fontsize=10,
    )
    legend = {
        "dcmtk on both sides": COLOURS["dcmtk"],
        "pynetdicom on both sides": COLOURS["pynetdicom"],
        "dimse on both sides": COLOURS["dimse"],
        "dimse on one side": COLOURS["cross"],
        "diagnostic (fsync disabled)": COLOURS["diagnostic"],
    }
    figure.legend(
        handles=[Patch(color=c, label=n) for n, c in legend.items()],
        loc="lower center",
        ncol=len(legend),
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="?", help="a bench/run.py JSON file")
    parser.add_argument("-o", "--output", type=Path, default=BENCH / "benchmark.png")
    args = parser.parse_args()
    source = args.results or newest(BENCH / "results")
    print(plot(source, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
