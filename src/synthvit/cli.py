"""The `synthvit` command: checks and benchmarks beside the DVC stages.

    synthvit check [params.yaml]     validate params without running anything
    synthvit bench synthetic         fractal rendering speed against a per-point reference
    synthvit bench train             training img/s of the engine against a plain DataLoader loop
    synthvit bench pretrain          pre-training img/s on batches rendered from the manifest vs a preloaded tensor
    synthvit predict IMAGE|DIR|GLOB  classify images (--model a checkpoint or models:/NAME@ALIAS, --top-k, --json)
    synthvit app                     the web demo on 127.0.0.1 (--host, --port, --model)
    synthvit compare                 a table and plot of experiments from MLflow (or --source dvc) into compare/
    synthvit record-restored         record in MLflow a pipeline execution that DVC restored from its cache
    synthvit tracking check          does the MLflow store (MLFLOW_TRACKING_URI) answer and let you in?
    synthvit tracking sync           upload tracking calls kept in .synthvit/outbox while the server was away
"""

from __future__ import annotations

import argparse

from synthvit.runner import run_main


def cmd_check(args) -> int:
    from synthvit.config import load_params

    params = load_params(args.params)
    print(f"{args.params}: valid (data {params.data.name}, synthetic {params.synthetic.kind}, model {params.model.name})")
    return 0


def cmd_tracking_check(args) -> int:
    from synthvit import tracking, tracking_check

    uri = tracking.tracking_uri()
    if tracking.sqlite_path(uri) is not None:
        print(f"MLflow tracking store {uri} is a local SQLite file: nothing to check")
        return 0
    tracking_check.check_tracking_store(uri)
    print(f"MLflow tracking store {tracking_check.redact(uri)} answers")
    return 0


def cmd_tracking_sync(args) -> int:
    from synthvit import outbox

    outbox.sync()
    return 0


def add_module_command(commands, name: str, module, help: str) -> None:
    """A subcommand run by `module.run(args)`, its options from `module.add_arguments`, its page from the module's docstring."""
    command = commands.add_parser(name, help=help, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(command)
    command.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    from synthvit import app, bench_source, bench_train, compare, predict, restored
    from synthvit.synthetic import bench as synthetic_bench

    parser = argparse.ArgumentParser(prog="synthvit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="validate params.yaml")
    check.add_argument("params", nargs="?", default="params.yaml")
    check.set_defaults(func=cmd_check)
    add_module_command(commands, "predict", predict, "classify image files, folders or glob patterns")
    add_module_command(commands, "app", app, "serve the web demo (Gradio) on this machine")
    add_module_command(commands, "compare", compare, "compare experiments: table (CSV, Markdown) and accuracy-cost plot")
    add_module_command(commands, "record-restored", restored, "record outputs DVC restored from its cache as MLflow runs")

    tracking = commands.add_parser("tracking", help="the MLflow tracking store: check it, upload what waits for it")
    tracking_commands = tracking.add_subparsers(dest="tracking", required=True)
    tracking_commands.add_parser("check", help="does the store answer and accept your credentials?").set_defaults(
        func=cmd_tracking_check)
    tracking_commands.add_parser("sync", help="upload the tracking calls kept in .synthvit/outbox during an outage").set_defaults(
        func=cmd_tracking_sync)

    bench = commands.add_parser("bench", help="benchmarks that print a figure")
    benches = bench.add_subparsers(dest="bench", required=True)
    add_module_command(benches, "synthetic", synthetic_bench, "fractal rendering images/s vs a per-point reference")
    add_module_command(benches, "train", bench_train, "training img/s: engine vs a plain DataLoader loop")
    add_module_command(benches, "pretrain", bench_source, "pre-training img/s: rendered from the manifest vs preloaded")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
