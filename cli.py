"""The `optforge` command: build, check, show."""

from __future__ import annotations

import argparse
import pathlib
import sys


def _root(args) -> pathlib.Path:
    from optforge.build import package_root

    return pathlib.Path(args.root).resolve() if args.root else package_root()


def cmd_build(args) -> int:
    from optforge.build import generate, write

    root = _root(args)
    changed = write(root, generate())
    for rel in changed:
        print(f"wrote {rel}")
    print(f"optforge build: {len(changed)} file(s) changed under {root}")
    return 0


def cmd_check(args) -> int:
    from optforge.build import diff, generate

    root = _root(args)
    text = diff(root, generate())
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
    c.set_defaults(run=cmd_check)
    s = sub.add_parser(
        "show", help="a rule's equations, hyperparameters, state (scope, bytes per parameter), reductions"
    )
    s.add_argument("rule", help="rule name (Adamax) or module name (adamax)")
    s.set_defaults(run=cmd_show)
    args = parser.parse_args(argv)
    from optforge.compiler.errors import RuleError

    try:
        return args.run(args)
    except RuleError as exc:
        print(f"optforge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
