"""Input-to-update latency of the explorer in a real browser (issue #13's targets).

JupyterLab on loopback runs notebooks/01_quickstart.ipynb on the bundled demo; Debian's chromium,
driven by Python Playwright, moves the layer slider (a mouse drag), types a feature (Enter), and
clicks a trace node, ``--repeats`` times each. For every interaction, the time from the input
event (measured in the page, in the capture phase, before any widget handles it) to the last DOM
change of the trace heading, the figure and the examples (each watched by a MutationObserver,
"last" = the change after which the element stayed quiet for 400 ms) is recorded; the medians
are printed against the targets: trace and figure within 150 ms, examples within 400 ms.

    python benchmarks/bench_browser.py [--repeats 7] [--json out.json]

Needs the browser extra (pip install -e ".[dev]") and Debian's chromium (apt-get install -y
chromium). The kernel uses one intra-op thread (OMP_NUM_THREADS=1), as in CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import _lab  # noqa: E402

TARGETS_MS = {"trace": 150.0, "figure": 150.0, "examples": 400.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ex = _lab.EXPLORER
    results: dict[str, dict[str, list[float]]] = {}
    first: dict[str, dict[str, list[float]]] = {}  # the first DOM change after the input
    with tempfile.TemporaryDirectory() as tmp, _lab.Lab(Path(tmp), ROOT / "notebooks" / "01_quickstart.ipynb") as lab:
        page = lab.open()
        lab.run_all()
        errors = lab.cell_errors()
        if errors:
            print("cell errors:", errors)
            return 1
        page.locator(f"{ex} .smn-node-button").first.wait_for(timeout=60_000)
        for name, sel in (("trace", f"{ex} .smn-trace-head"), ("figure", f"{ex} .smn-figure"),
                          ("examples", f"{ex} .smn-examples-box")):
            lab.watch(name, sel)
        features = [120, 33, 200, 7, 150, 64, 91, 240, 18, 177]

        def slide(k: int) -> None:
            _lab.drag_slider_to(page, f"{ex} .smn-layer-slider", 1.0 if k % 2 == 0 else 0.0)

        def type_(k: int) -> None:
            _lab.type_feature(page, features[k % len(features)])

        def click(k: int) -> None:
            page.locator(f"{ex} .smn-node-button").nth(1 + k % 4).click()

        for what, act in (("slide the layer", slide), ("type a feature", type_), ("click a trace node", click)):
            got: dict[str, list[float]] = {n: [] for n in TARGETS_MS}
            for k in range(args.repeats):
                lab.reset_probe()
                act(k)
                p = lab.settle(list(TARGETS_MS))
                for n in TARGETS_MS:
                    got[n].append(float(p["last"][n]))
                    first.setdefault(what, {}).setdefault(n, []).append(float(p["first"][n]))
            results[what] = got
        console = list(lab.console_errors)
    print(f"input-to-update latency in chromium (median of {args.repeats}; ms; last DOM change of each part)")
    print(f"{'interaction':<22}" + "".join(f"{n + ' (≤' + format(t, '.0f') + ')':>18}" for n, t in TARGETS_MS.items()))
    ok = True
    for what, got in results.items():
        cells = []
        for n, t in TARGETS_MS.items():
            med = statistics.median(got[n])
            ok &= med <= t
            cells.append(f"{med:>12.0f} {'ok' if med <= t else 'SLOW':>5}")
        print(f"{what:<22}" + "".join(cells))
        print(f"{'  (first change)':<22}" + "".join(f"{statistics.median(first[what][n]):>12.0f}{'':>6}"
                                                    for n in TARGETS_MS))
    if console:
        print("console errors:", console)
    if args.json:
        args.json.write_text(json.dumps({"targets_ms": TARGETS_MS, "results_ms": results, "first_ms": first,
                                              "console": console}, indent=1))
    print("all within target" if ok else "some medians above target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
