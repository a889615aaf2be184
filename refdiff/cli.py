"""Command-line interface: ``refdiff verify``, ``demo``, ``train``, ``sample`` and ``likelihood``.

Heavy modules (SciPy, the catalogue) are imported inside the sub-command that
needs them, so ``refdiff --help`` stays fast. Exit status: 0 on success, 1
when a check fails, 2 on bad arguments (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from ._version import __version__
from .cli_models import UsageError, add_bench, add_demo, add_likelihood, add_sample, add_schedule, add_train

EPILOG_VERIFY = """examples:
  refdiff verify                     run the whole equation catalogue
  refdiff verify --only 3 7          only entries 3 and 7
  refdiff verify --json report.json  also write the table as JSON
"""


def _write_json_atomic(path: str, payload) -> None:
    """Write strict JSON to ``path`` atomically: never half-written, and never a bare NaN or Infinity."""
    from ._atomic import atomic_write

    text = json.dumps(payload, indent=2, allow_nan=False)  # raises before the file is touched

    def write(fh):
        fh.write(text)
        fh.write("\n")

    atomic_write(path, write, suffix=".json", binary=False)


def _format_table(checks) -> str:
    rows = [("id", "check", "source", "error", "tolerance", "result")]
    for c in checks:
        rows.append((c.id, c.title, c.source, f"{c.error:.3g}", f"{c.tolerance:.3g}", "pass" if c.passed else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    widths[1] = min(widths[1], 72)
    widths[2] = min(widths[2], 40)

    def fmt(r):
        cells = [r[0].ljust(widths[0]), _clip(r[1], widths[1]).ljust(widths[1]), _clip(r[2], widths[2]).ljust(widths[2]),
                 r[3].rjust(widths[3]), r[4].rjust(widths[4]), r[5]]
        return "  ".join(cells)

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows[1:]]
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_json(check) -> dict:
    """A check as a JSON object; a non-finite error or tolerance (NaN, inf) is written as null."""
    out = check.as_dict()
    for key in ("error", "tolerance"):
        value = float(out[key])
        out[key] = value if math.isfinite(value) else None
    return out


def cmd_verify(args) -> int:
    from . import verify

    only = args.only or None
    if only:
        unknown = [i for i in only if i not in verify.ENTRIES]
        if unknown:
            print(f"refdiff verify: error: unknown entries {' '.join(unknown)}; choose from {' '.join(verify.ENTRIES)}", file=sys.stderr)
            return 2
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            print(f"refdiff verify: error: --json folder does not exist: {folder}", file=sys.stderr)
            return 2
    tty = sys.stderr.isatty()

    def progress(entry_id):
        if tty:
            print(f"\rrefdiff verify: entry {entry_id}/{len(verify.ENTRIES)} ...", end="", file=sys.stderr, flush=True)

    checks = verify.run(only, progress=progress)
    if tty:
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr)
    print(_format_table(checks))
    n_fail = sum(not c.passed for c in checks)
    print(f"\n{len(checks) - n_fail} passed, {n_fail} failed (Monte Carlo checks use fixed seeds)")
    if args.json:
        _write_json_atomic(args.json, {"refdiff_version": __version__, "checks": [_check_json(c) for c in checks]})
        print(f"wrote {args.json}")
    return 1 if n_fail else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refdiff",
        description="refdiff: a NumPy reference for diffusion and score-based models, checked against exact answers.",
        epilog="Run 'refdiff COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"refdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "verify",
        help="check every equation of the catalogue against exact answers",
        description="Run the equation catalogue: each identity with its measured error, tolerance and source.",
        epilog=EPILOG_VERIFY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", nargs="+", metavar="ID", help="entry numbers to run (default: all)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.set_defaults(func=cmd_verify)
    add_demo(sub)
    add_train(sub)
    add_sample(sub)
    add_likelihood(sub)
    add_bench(sub)
    add_schedule(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"refdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
