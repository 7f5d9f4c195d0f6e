"""The `optforge` command: build, check, show."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys


def _root(args) -> pathlib.Path:
    from optforge.builder import package_root

    return pathlib.Path(args.root).resolve() if args.root else package_root()


def cmd_build(args) -> int:
    from optforge.builder import generate, write

    root = _root(args)
    changed = write(root, generate())
    for rel in changed:
        print(f"wrote {rel}")
    print(f"optforge build: {len(changed)} file(s) changed under {root}")
    return 0


def cmd_check(args) -> int:
    from optforge.builder import diff, generate
    from optforge.rules import select

    root = _root(args)
    try:
        select(args.rules)
    except ValueError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    text = diff(root, generate(args.rules), everything=args.rules is None)
    if text:
        sys.stdout.write(text)
        print(f"\noptforge check: generated files under {root} are stale; refresh them with `optforge build`")
        return 1
    print("optforge check: generated files are up to date")
    return 0


def cmd_show(args) -> int:
    from optforge.compiler.pipeline import compile_rule
    from optforge.compiler.show import show
    from optforge.rules import get

    try:
        rule = get(args.rule)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    print(show(compile_rule(rule)))
    return 0


def cmd_diff(args) -> int:
    from optforge.documentation.pages import counterpart_lines, counterparts, diff_lines
    from optforge.rules import get, registry

    try:
        a, b = get(args.a), get(args.b)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    print(f"{a.name} -> {b.name}:")
    flavours = {other.name: (fa, fb) for other, fa, fb in counterparts(a, registry())}
    if b.name in flavours:  # another library's flavour: the new values compared as functions
        print("\n".join(counterpart_lines(a, b, *flavours[b.name])))
    else:  # equation by equation
        print("\n".join(diff_lines(a, b)))
    return 0


def cmd_plots(args) -> int:
    from optforge.documentation.plots import write_plots

    for path, plot, written in write_plots(_root(args), only=args.rule, force=args.force):
        if plot is None:
            print(f"unchanged {path} (drawn from these rules, runtime and libraries; --force draws it again)")
            continue
        spreads = ", ".join(f"{problem} {value:.1e}" for problem, value in plot.spread.items())
        said = f" (backends differ by at most: {spreads})" if spreads else ""
        print(f"{'wrote' if written else 'unchanged'} {path}{said}")
    return 0


def cmd_site(args) -> int:
    from optforge.documentation.site import build_site

    out = build_site(_root(args), pathlib.Path(args.out).resolve() if args.out else None)
    print(f"optforge site: wrote {out}/index.html (equations rendered by KaTeX served from the site itself)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="optforge", description="Optimizers written once, compiled to NumPy, JAX and PyTorch."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile every rule and write generated/ (and its exports)")
    b.add_argument(
        "--root", help="folder holding generated/ (default: the optforge package, i.e. the checkout)"
    )
    b.set_defaults(run=cmd_build)
    c = sub.add_parser("check", help="exit 1 and print the diff when generated/ is stale")
    c.add_argument("--root", help="folder holding generated/")
    c.add_argument(
        "--rules",
        nargs="+",
        metavar="RULE",
        help="check only these rules' modules and pages (names or modules; default: everything)",
    )
    c.set_defaults(run=cmd_check)
    s = sub.add_parser(
        "show", help="a rule's equations, hyperparameters, state (scope, bytes per parameter), reductions"
    )
    s.add_argument("rule", help="rule name (Adamax) or module name (adamax)")
    s.set_defaults(run=cmd_show)
    d = sub.add_parser("diff", help="the equation-level difference between two rules")
    d.add_argument("a")
    d.add_argument("b")
    d.set_defaults(run=cmd_diff)
    pl = sub.add_parser(
        "plots", help="draw each optimizer's loss curves in the three backends (docs/optimizers/*.png)"
    )
    pl.add_argument("--root", help="folder holding docs/")
    pl.add_argument("--rule", help="only this rule")
    pl.add_argument(
        "--force", action="store_true", help="draw every picture, also those whose inputs are unchanged"
    )
    pl.set_defaults(run=cmd_plots)
    si = sub.add_parser("site", help="build the static HTML site of docs/ (KaTeX served locally) into site/")
    si.add_argument("--root", help="folder holding docs/")
    si.add_argument("--out", help="output folder (default: site/ beside docs/)")
    si.set_defaults(run=cmd_site)
    args = parser.parse_args(argv)
    from optforge.compiler.errors import RuleError

    try:
        code = args.run(args)
        # flushed here, not at exit, so that a reader gone early (`| head`) is caught below
        sys.stdout.flush()
        return code
    except RuleError as exc:
        print(f"optforge: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of stdout stopped reading (`optforge show nadam | head -2`): not an error of ours. Point
        # stdout at /dev/null so that the interpreter's own flush at exit cannot raise again, and exit as a
        # process killed by SIGPIPE does (128 + 13), the way `yes | head` ends.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
