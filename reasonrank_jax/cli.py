"""`reasonrank-jax <command>`: one module per command, imported only when that command runs.

Each command module defines ``add_arguments(parser)`` and ``main(args) -> int``. Heavy imports
(jax, transformers) belong inside ``main`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reasonrank_jax.errors import InputError

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "smoke": ("reasonrank_jax.models.smoke_cli",
              "build a tiny random model, export it to HF format, reload it and print logits parity"),
    "model-info": ("reasonrank_jax.models.info_cli",
                   "print a Hugging Face checkpoint's config, parameter count and shards"),
    "eval": ("reasonrank_jax.eval.cli", "evaluate TREC runs against qrels or BRIGHT examples"),
    "rerank": ("reasonrank_jax.inference.cli", "sliding-window rerank of a first-stage run"),
    "data": ("reasonrank_jax.data.cli", "build, filter, inspect and synthesize training data"),
}


def _available_commands() -> dict[str, object]:
    modules = {}
    for name, (module_name, _) in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # a real missing dependency: that is a bug, not a missing command
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reasonrank-jax",
        description="ReasonRank listwise reranking in JAX: models, reranking, evaluation, data, training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _available_commands().items():
        command_parser = sub.add_parser(name, help=COMMANDS[name][1], description=COMMANDS[name][1])
        module.add_arguments(command_parser)
        command_parser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except InputError as err:
        print(f"reasonrank-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reasonrank-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
