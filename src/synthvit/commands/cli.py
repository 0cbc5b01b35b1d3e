"""The `synthvit` command: everything beside the DVC stages.

synthvit check [params.yaml]      validate params without running anything
synthvit recipe NAME              the `-S` overrides of a named recipe (recipes.yaml), for dvc exp run
synthvit predict IMAGE|DIR|GLOB   classify images (--model a checkpoint or models:/NAME@ALIAS)
synthvit app                      the web demo on 127.0.0.1
synthvit compare                  a table and plot of experiments (MLflow or DVC)
synthvit record-restored          record in MLflow a pipeline execution that DVC restored from its cache
synthvit tracking check|sync      does the MLflow store answer? upload what waited for it
synthvit bench synthetic|train|pretrain   benchmarks that print a figure
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from synthvit.errors import run_main

# Each command: its module (with add_arguments(parser) and run(args); "module:name" for a
# module with several, as name_arguments and name) and its one-line help; a group of commands
# ("results") has no module ("") and comes before its commands ("results lock"). Only the module
# of the command being run is imported: torch, timm and MLflow take seconds to import, and
# `synthvit --help` or `synthvit check` should not wait for them.
COMMANDS = {
    "check": ("synthvit.commands.check", "validate params.yaml (or another params file) without running anything"),
    "recipe": ("synthvit.commands.recipe", "print a named recipe's `-S key=value` overrides (recipes.yaml)"),
    "predict": ("synthvit.commands.predict", "classify image files, folders or glob patterns"),
    "app": ("synthvit.commands.app", "serve the web demo (Gradio) on this machine"),
    "export": ("synthvit.commands.export", "write a checkpoint as a folder timm loads, with a model card"),
    "compare": ("synthvit.commands.compare", "compare experiments: table (terminal, Markdown, CSV) and plot"),
    "results": ("", "locked results in results/: lock, show, check, readme"),
    "results lock": ("synthvit.commands.results:lock_command", "copy a finished DVC experiment into results/ (locked)"),
    "results show": ("synthvit.commands.results:show", "print a group of locked results as a table"),
    "results check": ("synthvit.commands.results:check", "re-run a locked result and check it lands in its spread"),
    "results readme": ("synthvit.commands.results:readme", "regenerate the result tables of README.md and docs/"),
    "record-restored": ("synthvit.commands.restored", "record outputs DVC restored from its cache as MLflow runs"),
    "tracking": ("", "the MLflow tracking store: check it, upload what waits for it"),
    "tracking check": ("synthvit.commands.tracking:check", "does the MLflow store answer and accept your credentials?"),
    "tracking sync": ("synthvit.commands.tracking:sync", "upload the tracking calls kept in .synthvit/outbox"),
    "bench": ("", "benchmarks that print a figure"),
    "bench synthetic": ("synthvit.commands.bench.synthetic", "fractal rendering img/s vs a per-point reference"),
    "bench train": ("synthvit.commands.bench.train", "training img/s: engine vs a bare step and a DataLoader loop"),
    "bench pretrain": (
        "synthvit.commands.bench.pretrain",
        "pre-training img/s: rendered from the manifest vs preloaded",
    ),
}


def load_command(spec: str):
    """(add_arguments or None, run, description) of a command's module."""
    module_name, _, name = spec.partition(":")
    module = importlib.import_module(module_name)
    if name:
        return getattr(module, f"{name}_arguments", None), getattr(module, name), getattr(module, name).__doc__
    return module.add_arguments, module.run, module.__doc__


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command that `argv` names gets its options (all of them when argv is None)."""
    words = [arg for arg in argv or [] if not arg.startswith("-")]
    parser = argparse.ArgumentParser(
        prog="synthvit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = {"": parser.add_subparsers(dest="command", required=True, metavar="COMMAND")}
    for name, (spec, help_text) in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        command = subparsers[group].add_parser(
            leaf, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        if not spec:  # a group: its commands come next
            subparsers[name] = command.add_subparsers(dest=name, required=True, metavar="COMMAND")
        elif argv is None or name.split() == words[: len(name.split())]:
            add_arguments, run, command.description = load_command(spec)
            if add_arguments is not None:
                add_arguments(command)
            if group == "bench":
                command.add_argument(
                    "--record",
                    metavar="NAME",
                    help="also write the output, the command and the "
                    "machine to results/benchmarks/NAME.txt (the figures the docs quote)",
                )
            command.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "record", None):  # a benchmark's --record NAME: also keep its output in results/benchmarks/
        from synthvit.commands.benchmarks import record  # measured: keeps torch out of `synthvit --help`

        run_main(lambda: record(args.func, args, "synthvit " + shlex.join(argv)))
    else:
        run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
