"""synthvit: pre-train Vision Transformers on formula-driven fractals, fine-tune, evaluate, show.

The package map. Each DVC stage (stages/*.py) reads its params, calls into these
packages and writes the outputs dvc.yaml declares. Layers, top to bottom (a module
imports only from its own layer or below; tests/unit/test_layout.py checks it):

    commands/    the `synthvit` CLI: check, recipe, predict, app, export, compare, results, bench
    pipeline.py  every stage's preamble: params, input checks, its MLflow run, its timing file
    tracking/    MLflow bookkeeping: store, stage runs, health check, outbox, registry, summaries, timing
    training/    the training loop, resumable state, torchrun, what pretrain/finetune share
    evaluation/  inference, metrics, calibration, attention maps, figures
    data/        image sets and their batches, the fractal set as training reads it, augmentation
    synthetic/   the fractal generator: exactly the code generate_synthetic runs
    models.py    the timm factory, ViT ablations, checkpoints
    runtime.py   device, precision, seeds, determinism, progress bars and log lines
    config.py    typed, validated params.yaml (and recipes.yaml)
    files.py     output paths, repository paths, atomic writes
    errors.py    one-line user errors, damaged-file messages, the entry-point wrapper

Bookkeeping (pipeline.py, tracking/, commands/) never changes what a stage computes, so
dvc.yaml does not list it as a dependency: editing it re-runs nothing.
"""
