"""`reasonrank-jax <command>`: one module per command.

Each command module defines ``add_arguments(parser)`` and ``main(args) -> int``; all are imported to build the
parser, so heavy imports (jax, transformers) belong inside ``main`` and ``--help`` stays fast.
``--config YAML`` gives a command its option values from a file; the command line overrides them.
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


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="reasonrank-jax",
        description="ReasonRank listwise reranking in JAX: models, reranking, evaluation, data, training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    command_parsers = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.add_argument("--config", metavar="YAML",
                                    help="settings for this command (keys are its option names); "
                                         "options on the command line override them")
        command_parser.set_defaults(_main=module.main)
        command_parsers[name] = command_parser
    return parser, command_parsers


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def apply_config(command_parser: argparse.ArgumentParser, path: str) -> None:
    """Use a YAML file's settings as the command's defaults (so the command line still overrides them)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            settings = yaml.safe_load(f) or {}
    except OSError as err:
        raise InputError(f"cannot read config: {err.strerror}", path=path) from None
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {str(err).splitlines()[0]}", path=path) from None
    if not isinstance(settings, dict):
        raise InputError("expected a mapping of option names to values", path=path)
    actions = {action.dest: action for action in command_parser._actions}
    defaults = {}
    for key, value in settings.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            raise InputError(f"unknown setting for '{command_parser.prog}'", path=path, field=str(key))
        actions[dest].required = False
        defaults[dest] = value
    command_parser.set_defaults(**defaults)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, command_parsers = build_parser()
    command = argv[0] if argv else None
    try:
        config = _config_path(argv)
        if config and command in command_parsers:
            apply_config(command_parsers[command], config)
        args = parser.parse_args(argv)
        return int(args._main(args) or 0)
    except InputError as err:
        print(f"reasonrank-jax {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reasonrank-jax {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
