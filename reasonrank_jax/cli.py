"""`reasonrank-jax <command>`: one module per command, each with a typed config.

A command module defines ``CONFIG`` (a frozen config dataclass, :mod:`reasonrank_jax.config`) and ``main(config)
-> int``, or ``SUBCOMMANDS`` (name -> (config class, function name, help)). The command-line options are made from
the config's fields, so ``--window 20``, ``window: 20`` in ``--config FILE.yaml`` and ``window=20`` are the same
setting, converted and checked in one place. Command modules import jax and transformers only inside their
functions, so ``--help`` stays fast.

Errors: bad input (:class:`InputError`) is one line on stderr and exit code 2; a closed stdout (``| head``) ends
the command quietly with 141, as SIGPIPE would; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from reasonrank_jax.config import (Source, Values, unwrap_optional, fields_of, flag_name, is_config,
                                   parse_override, read_yaml_mapping)
from reasonrank_jax.errors import InputError

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("reasonrank_jax.pipeline.demo", "the whole job on this machine: synthetic data -> tiny model -> SFT -> GRPO "
                                             "-> sliding-window rerank -> nDCG table, plots, report"),
    "sweep": ("reasonrank_jax.pipeline.sweep", "run a grid of demo settings over seeds (here, or as launch commands) "
                                               "-> results.csv, results.md, plots"),
    "smoke": ("reasonrank_jax.models.smoke_cli",
              "build a tiny random model, export it to HF format, reload it and print logits parity"),
    "model-info": ("reasonrank_jax.models.info_cli",
                   "print a Hugging Face checkpoint's config, parameter count and shards"),
    "eval": ("reasonrank_jax.eval.cli", "evaluate TREC runs against qrels or BRIGHT examples"),
    "rerank": ("reasonrank_jax.inference.cli", "sliding-window rerank of a first-stage run"),
    "data": ("reasonrank_jax.data.cli", "build, filter, inspect and synthesize training data"),
    "train": ("reasonrank_jax.training.cli", "train a reranker: SFT (full or LoRA) and GRPO on the device mesh, resumable"),
    "export": ("reasonrank_jax.training.export", "write a trained checkpoint as a Hugging Face model (LoRA merged)"),
    "plan": ("reasonrank_jax.scale.plan", "compile a training step for a TPU topology from this host: memory per "
                                          "chip, fit, FLOPs, step-time bound"),
    "launch": ("reasonrank_jax.launch.cli", "launch a command on a TPU VM pod, a GKE cluster (XPK) or N local "
                                            "processes"),
}

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*=")
EPILOG = ("Settings also come from --config FILE.yaml (keys are the option names, e.g. 'max-passage-length: 512'; "
          "sections are nested mappings) and from KEY=VALUE arguments (section.key=value); precedence: "
          "KEY=VALUE > options > --config > defaults. Bad input: one line on stderr, exit code 2.")


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error contract: one line on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _describe(field, tp) -> str:
    meta, parts = field.metadata, [field.metadata.get("help", "")]
    base, _ = unwrap_optional(tp)
    if meta.get("choices"):
        parts.append("one of: " + ", ".join(map(str, meta["choices"])))
    if meta.get("required"):
        parts.append("required")
    elif not (field.default is None or field.default is False or field.default == ()):
        default = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        parts.append(f"default: {default}")
    bounds = [f">= {meta['min']:g}" if meta.get("min") is not None else "",
              f"<= {meta['max']:g}" if meta.get("max") is not None else ""]
    if any(bounds) and base is not bool:
        parts.append(" and ".join(b for b in bounds if b))
    return "; ".join(p for p in parts if p).replace("%", "%%")


def _section_help(cls: type, prefix: str = "") -> list[str]:
    """Lines describing the keys of a config's sections (settable only from YAML and KEY=VALUE)."""
    lines = []
    for name, (field, tp) in fields_of(cls).items():
        if is_config(tp):
            lines += _section_help(tp, f"{prefix}{name}.")
        elif prefix:
            lines.append(f"  {prefix + name:28s}{_describe(field, tp).replace('%%', '%')}")
    return lines


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argparse option per config field. argparse only collects strings: converting and checking them is the
    config's job, and defaults stay in the dataclass (SUPPRESS), so a YAML value is not hidden by one."""
    for name, (field, tp) in fields_of(cls).items():
        meta = field.metadata
        if is_config(tp) or not meta.get("flag", True):
            continue
        base, _ = unwrap_optional(tp)
        many = getattr(base, "__origin__", None) is tuple
        kwargs = {"default": argparse.SUPPRESS, "help": _describe(field, tp)}
        if meta.get("rest"):
            parser.add_argument(name, nargs=argparse.REMAINDER, metavar="-- " + (meta.get("metavar") or "ARGS"),
                                **kwargs)
        elif meta.get("positional"):
            parser.add_argument(name, nargs="*" if many else "?", metavar=meta.get("metavar") or name.upper(),
                                **kwargs)
        elif base is bool:
            parser.add_argument(flag_name(name), dest=name, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            metavar = meta.get("metavar") or ("{" + ",".join(map(str, meta["choices"])) + "}"
                                              if meta.get("choices") else name.split("_")[-1].upper())
            names = [flag_name(name)] + ([meta["short"]] if meta.get("short") else [])
            parser.add_argument(*names, dest=name, nargs="+" if many else None, metavar=metavar, **kwargs)
    if getattr(cls, "TRAINING_CONFIG", False):
        parser.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS,
                            help="the training config (as for `train sft|grpo`); section.key=VALUE arguments "
                                 "override it")
        parser.add_argument("--print-config", action="store_true", default=argparse.SUPPRESS,
                            help="print the resolved config as YAML and exit")
        return
    parser.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS,
                        help="settings for this command from a YAML file; the command line overrides them")
    parser.add_argument("--print-config", action="store_true", default=argparse.SUPPRESS,
                        help="print the resolved config as YAML and exit")
    sections = _section_help(cls)
    if sections:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = "settings (section.key=VALUE, or nested mappings in --config):\n" + "\n".join(sections) \
            + "\n\n" + EPILOG


def build_parser() -> tuple[argparse.ArgumentParser, dict[tuple[str, ...], tuple[type, object]]]:
    """The parser, and (command, [subcommand]) -> (config class, function) for every leaf command."""
    parser = _Parser(
        prog="reasonrank-jax",
        description="ReasonRank listwise reranking in JAX: models, reranking, evaluation, data, training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    leaves = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
        if hasattr(module, "SUBCOMMANDS"):
            inner = command_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            inner.required = True
            for sub_name, (cls, function, sub_help) in module.SUBCOMMANDS.items():
                leaf = inner.add_parser(sub_name, help=sub_help, description=sub_help, epilog=EPILOG)
                add_config_arguments(leaf, cls)
                leaves[(name, sub_name)] = (cls, getattr(module, function))
        else:
            add_config_arguments(command_parser, module.CONFIG)
            leaves[(name,)] = (module.CONFIG, module.main)
    return parser, leaves


def _split_overrides(argv: list[str], cls: type) -> tuple[list[str], list[str]]:
    """KEY=VALUE arguments (not an existing file's name, not an option's value) apart from the rest."""
    takes_value = {flag_name(n) for n, (f, tp) in fields_of(cls).items()
                   if not is_config(tp) and unwrap_optional(tp)[0] is not bool} | {"--config"}
    overrides, rest = [], []
    for i, arg in enumerate(argv):
        if arg == "--":  # what follows is another command's, untouched
            return overrides, rest + argv[i:]
        after_option = i > 0 and argv[i - 1] in takes_value
        if _OVERRIDE.match(arg) and not after_option and not os.path.exists(arg):
            overrides.append(arg)
        else:
            rest.append(arg)
    return overrides, rest


def resolve_config(cls: type, args: argparse.Namespace, overrides: list[str]):
    """defaults < --config < options < KEY=VALUE; every value checked by the config (see config.py).

    A config class with ``TRAINING_CONFIG = True`` (plan, launch) is about a training run: its ``--config`` is the
    training YAML and the KEY=VALUE arguments override that, so both land in its ``config`` and ``overrides``
    fields, to be resolved by the command (`training.setup.load_training_config`)."""
    values = Values(cls)
    config_path = getattr(args, "config", None)
    training = getattr(cls, "TRAINING_CONFIG", False)
    if training:
        if config_path:
            values.set("config", config_path, Source(None, "--config"))
        values.set("overrides", tuple(overrides), Source(None, "KEY=VALUE"))
        overrides, config_path = [], None
    elif config_path:
        values.set_mapping(read_yaml_mapping(config_path), config_path)
    for name, (field, tp) in fields_of(cls).items():
        if not is_config(tp) and hasattr(args, name) and not (training and name == "config"):
            label = name if field.metadata.get("positional") else flag_name(name)
            value = getattr(args, name)
            if field.metadata.get("rest"):
                value = tuple(value[1:] if value[:1] == ["--"] else value)
            values.set(name, value, Source(None, label))
    for text in overrides:
        key, value = parse_override(text)
        values.set(key, value, Source(None, text))
    return values.build(config_path)


def _leaf_of(argv: list[str], leaves: dict) -> tuple[str, ...] | None:
    for length in (2, 1):
        if tuple(argv[:length]) in leaves:
            return tuple(argv[:length])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, leaves = build_parser()
    leaf = _leaf_of(argv, leaves)
    name = " ".join(leaf) if leaf else (argv[0] if argv else "")
    try:
        overrides, rest = ([], argv) if leaf is None else _split_overrides(argv[len(leaf):], leaves[leaf][0])
        args = parser.parse_args(argv if leaf is None else list(leaf) + rest)
        cls, function = leaves[leaf]
        config = resolve_config(cls, args, overrides)
        if getattr(args, "print_config", False):
            from reasonrank_jax.config import to_yaml

            print(to_yaml(config, name), end="")
            return 0
        return int(function(config) or 0)
    except InputError as err:
        print(f"reasonrank-jax {name}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"reasonrank-jax {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
