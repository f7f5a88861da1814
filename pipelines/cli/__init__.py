"""The ``concept-erase`` command line.

    concept-erase unlearn --method salun --dataset digits --model cnn --forget class:3 --output out/salun
    concept-erase bench classifiers --dataset mnist5k --scenarios class:3 random:0.1 --seeds 3 --output out/bench
    concept-erase evaluate --model out/ft --output_dir out/ft-eval
    concept-erase erase --method fmn --concept seven --output_dir out/fmn-seven
    concept-erase evaluate --model out/fmn-seven --output_dir out/fmn-seven-eval
    concept-erase sequence --method uce --concept seven --concept two --output_dir out/seq
    concept-erase demo --output_dir outputs/demo
    concept-erase unlearnable study --dataset digits --output_dir out/ue-study
    concept-erase run quickstart --output_dir out/quickstart
    concept-erase list

Errors the user can fix exit with status 2 and one line on stderr; an unexpected exception exits with status 1 and
one line (``--debug`` prints the traceback). Every command writes its output directory atomically and refuses an
existing non-empty one unless ``--overwrite`` is given (``run`` resumes its own earlier output instead).

One module per command group, each registering its subcommands with ``add_parsers(sub, parents)``:
:mod:`~pipelines.cli.classify` (``unlearn``, ``bench``), :mod:`~pipelines.cli.erase` (``erase``, ``evaluate``,
``oracle``), :mod:`~pipelines.cli.attack`, :mod:`~pipelines.cli.sequence`, :mod:`~pipelines.cli.run` (``run``,
``demo``, ``list``), :mod:`~pipelines.cli.sisa`, :mod:`~pipelines.cli.vbu`, :mod:`~pipelines.cli.distruction` and :mod:`~pipelines.cli.unlearnable`; :mod:`~pipelines.cli._common` holds the parser
class, the shared options (declared once), printing and the error handling.

Imports: the command handlers (the ``cmd_*`` functions and the helpers they call) import the library inside their
bodies. This is the one place in the project where function-local imports are the rule: building the parser and
printing ``--help`` must not load torch, sklearn or diffusers (a test checks it). Module level here imports only
the standard library and this package.
"""

from __future__ import annotations

import argparse

from concept_erase import __version__
from pipelines.cli import attack, classify, distruction, erase, run, sequence, sisa, unlearnable, vbu
from pipelines.cli._common import CONFIGS_DIR, PROG, Parser, debug_parent, run_command

__all__ = ["CONFIGS_DIR", "PROG", "build_parser", "main"]

# in the order of the command listing in --help
_REGISTER = (
    classify.add_parsers,
    erase.add_parsers,
    attack.add_parsers,
    sequence.add_parsers,
    run.add_parsers,
    sisa.add_parsers,
    vbu.add_parsers,
    distruction.add_parsers,
    unlearnable.add_parsers,
    run.add_list_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Make trained models forget: concept erasure and classifier unlearning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    parents = [debug_parent()]
    for register in _REGISTER:
        register(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 unexpected error, 2 usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else 0
    return run_command(args)
