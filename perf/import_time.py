"""How long ``import shoal`` takes in a fresh interpreter, and that it loads no engine.

    python perf/import_time.py [--repeats 10] [--quick] [--out DIR]

Each repeat starts a new Python, times ``import shoal`` inside it (interpreter start-up excluded)
and lists which of ray, dask, distributed and optuna it loaded (target: under 0.2 s, none).
Writes ``import_time.json``/``.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness import Session, Timing, bars, options, pyplot

ENGINES = ("ray", "dask", "distributed", "optuna")
PROBE = (
    "import json, sys, time\n"
    "began = time.perf_counter()\n"
    "import shoal\n"
    f"print(json.dumps({{'seconds': time.perf_counter() - began, 'loaded': [m for m in {ENGINES!r} if m in sys.modules]}}))\n"
)


def probe() -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(report: dict, path) -> None:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(5, 3.4))
    bars(axis, ["fastest", "median"], [report["fastest_s"], report["median_s"]], ["#3b75af", "#a6c8e8"], "{:.3f} s")
    axis.axhline(0.2, color="red", linestyle="--", linewidth=1, label="target 0.2 s")
    axis.set_ylabel("seconds")
    axis.set_title(f"import shoal, {len(report['all_s'])} fresh interpreters", fontsize=9)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    args = options(__doc__, {"repeats": 3}, lambda parser: None, repeats=10)
    session = Session("import_time", args)
    probes = [probe() for _ in range(args.repeats)]
    timing = Timing([p["seconds"] for p in probes])
    loaded = sorted({m for p in probes for m in p["loaded"]})
    print(f"import shoal: fastest {timing.fastest:.3f} s, median {timing.median:.3f} s (target < 0.2 s); "
          f"engines loaded: {', '.join(loaded) or 'none'}", flush=True)
    session.write({**timing.as_dict(), "engines_loaded": loaded}, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
