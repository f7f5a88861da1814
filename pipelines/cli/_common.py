"""What every command group shares: the parser class, the options several commands take, printing, error handling.

The option helpers declare each shared flag once (name, aliases, type, default); a command passes its own help text
where its meaning differs (``run``'s ``--overwrite`` starts again, ``oracle``'s ``--output_dir`` is optional).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

PROG = "concept-erase"
CONFIGS_DIR = Path(__file__).parent.parent / "configs"  # the bundled pipelines (pipelines/configs/*.yaml)

OUTPUT_HELP = "output directory (written atomically)"
OVERWRITE_HELP = "replace an existing non-empty output directory"
RESTART_HELP = "start again, replacing the output directory"
SET_HELP = "override config keys (dotted)"
STEP_SET_HELP = "override: steps.<id>.<key>=value"
METHOD_CONFIG_HELP = "method config (YAML mapping of the method's config keys)"
DATASET_HELP = "digits, mnist5k, an image folder or an .npz (default: digits)"
ARCHITECTURE_HELP = "architecture: mlp, cnn, vit (default: cnn)"


class Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (status 2), like every other error of the command."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def debug_parent() -> argparse.ArgumentParser:
    """The parent of every subcommand: ``--debug`` is accepted after the command too (hidden there)."""
    parent = Parser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parent


# ---------------------------------------------------------------------------------------------------- options


def add_output_options(
    p: argparse.ArgumentParser,
    *,
    required: bool = True,
    default: str | None = None,
    alias: bool = True,
    help: str = OUTPUT_HELP,
    overwrite_help: str = OVERWRITE_HELP,
) -> None:
    """``--output_dir`` (alias ``--output`` unless ``alias=False``) and ``--overwrite``."""
    names = ("--output_dir", "--output") if alias else ("--output_dir",)
    p.add_argument(*names, required=required, default=default, help=help)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_set_option(p: argparse.ArgumentParser, *, help: str = SET_HELP) -> None:
    """``--set KEY=VALUE ...``, repeatable (the values add up); default ``[]``."""
    p.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help=help)


def add_config_options(p: argparse.ArgumentParser, *, config_help: str, set_help: str = SET_HELP) -> None:
    """``--config YAML`` and ``--set KEY=VALUE ...`` (overrides on top of the YAML)."""
    p.add_argument("--config", metavar="YAML", help=config_help)
    add_set_option(p, help=set_help)


def add_seed_option(
    p: argparse.ArgumentParser, *, default: int | None = None, help: str = "random seed (sets the method config's seed)"
) -> None:
    """``--seed N``."""
    p.add_argument("--seed", type=int, default=default, help=help)


def add_dataset_option(p: argparse.ArgumentParser) -> None:
    """``--dataset`` of the classifier commands (default: digits)."""
    p.add_argument("--dataset", default="digits", help=DATASET_HELP)


# ---------------------------------------------------------------------------------------------------- output


def check_output(args: argparse.Namespace, inputs=()) -> Path:
    """``--output_dir`` checked before any work: a non-empty one is refused unless ``--overwrite`` is given, and one
    that is, contains or lies inside one of ``inputs`` (paths the command reads) is refused with or without it."""
    from concept_erase.core.io import check_output_dir

    return check_output_dir(args.output_dir, args.overwrite, inputs=list(inputs))


def say(text: str) -> None:
    print(text, flush=True)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def on_one_torch_thread(run, args: argparse.Namespace) -> int:
    """``run(args)`` on one torch thread, restoring the count after: the models of the studies are tiny, and
    spin-waiting threads on a busy machine cost more than they give."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- errors


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def run_command(args: argparse.Namespace) -> int:
    """Run the chosen command's handler; errors become one line on stderr and an exit status (see the package)."""
    try:  # here, not at the top: --help stays free of sklearn
        from concept_erase.core.errors import ConceptEraseError
    except ImportError as exc:  # a broken installation: say what is missing, without a traceback
        print(f"{PROG}: error: {exc} (is concept-erase installed with its dependencies?)", file=sys.stderr)
        return 1
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except (ConceptEraseError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1
