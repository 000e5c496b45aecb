"""Command line: ``python -m saematch_nb warmup`` (compile the solver kernels once, after
installing) and ``python -m saematch_nb demo`` (the bundled demo, as ``make demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo's own options (and --help) go to it unchanged
        from .demo.__main__ import main as demo_main
        return demo_main(argv[1:]) or 0
    ap = argparse.ArgumentParser(prog="python -m saematch_nb")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("warmup", help="compile the numba kernels of the 'jv' and 'sparse' solvers into numba's "
                                  "cache, so that a first match() in a new process does not compile them")
    sub.add_parser("demo", help="run the bundled demo, as make demo (its options: python -m saematch_nb demo "
                                "--help)")
    ap.parse_args(argv)
    from .core.lap.warmup import NumbaCacheError, warm_up
    try:
        r = warm_up(progress=sys.stderr.isatty())
    except (ImportError, NumbaCacheError) as e:  # numba missing, or nowhere to write its cache
        print(f"saematch_nb warmup: {e}", file=sys.stderr)
        return 1
    print(f"saematch_nb warmup: {r['kernels']} kernels, {r['signatures']} signatures ready "
          f"({r['compiled']} compiled, {r['loaded']} loaded from numba's cache) in {r['seconds']:.1f} s; "
          f"devices: {', '.join(r['devices'])}")
    if r["not_reached"]:
        print(f"  not reached by the warm-up problems (compiled on first use): {', '.join(r['not_reached'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
