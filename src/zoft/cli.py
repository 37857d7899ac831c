"""The ``zoft`` command line."""

from __future__ import annotations

import argparse
import sys

from zoft.estimators import ESTIMATORS
from zoft.optim import list_optimizers
from zoft.perturb import PERTURBATIONS


def _cmd_list(args: argparse.Namespace) -> int:
    for title, names in [("optimizers", list_optimizers()), ("estimators", ESTIMATORS.names()),
                         ("perturbations", PERTURBATIONS)]:
        print(f"{title}: {', '.join(names)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoft", description="Zeroth-order fine-tuning of language models")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the available optimizers, estimators, perturbations").set_defaults(
        func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
