"""Does the test suite notice a broken pipeline? Apply targeted mutations, one at a time, and count the caught.

    .venv/bin/python tests/mutations.py            # every mutation (about 10 minutes on 2 cores)
    .venv/bin/python tests/mutations.py --list     # the mutations and the tests expected to catch each
    .venv/bin/python tests/mutations.py alias-always-moves swapped-arms   # some of them

Each mutation replaces one piece of code (the text must occur exactly once, so a refactor
that moves it makes the script say so rather than test nothing) in a fresh copy of the
working tree, runs the tests named for it with that copy's code, and counts the mutation
as caught when they fail. Exit code 1 if any survives. Not part of `make test`: it runs
the same tests many times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.repo import find_cifar10, snapshot_repo  # noqa: E402  (tests/ is not a package on the path)


@dataclass
class Mutation:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: list[str]


MUTATIONS = [
    Mutation(
        "no-pretraining-curve",
        "the comparison figure leaves out the pre-training curves",
        "src/synthvit/commands/reporting/figures.py",
        'ax_pre.plot(curve["epoch"], curve[column], marker=".", label=label)',
        "pass",
        ["tests/unit/test_compare_arms.py"],
    ),
    Mutation(
        "swapped-arms",
        "the arms' labels are swapped",
        "src/synthvit/commands/compare.py",
        'arms = [(chr(ord("A") + i), Experiment.named(name, revs)) for i, name in enumerate(names)]',
        'arms = [(chr(ord("A") + i), Experiment.named(name, revs)) for i, name in enumerate(names[::-1])]',
        ["tests/pipeline/test_demo.py::test_demo_fine_tunes_three_arms_from_the_released_backbone_and_compares_them"],
    ),
    Mutation(
        "swapped-scores",
        "each arm's whole-test star shows another arm's score",
        "src/synthvit/commands/reporting/figures.py",
        "for (label, experiment), row in zip(arms, table.itertuples()):",
        "for (label, experiment), row in zip(arms, list(table.itertuples())[::-1]):",
        ["tests/unit/test_compare_arms.py"],
    ),
    Mutation(
        "difference-reversed",
        "the table's differences are the other arm minus the first",
        "src/synthvit/commands/compare.py",
        "differences = (numbers.iloc[0] - numbers.iloc[1:])",
        "differences = (numbers.iloc[1:] - numbers.iloc[0])",
        ["tests/unit/test_compare_arms.py"],
    ),
    Mutation(
        "no-resume-fingerprint",
        "a resume state is found whatever the recipe, data or weights",
        "src/synthvit/training/resume.py",
        'keyed = {**fingerprint, "state_format": STATE_FORMAT}',
        'keyed = {"state_format": STATE_FORMAT}',
        ["tests/unit/test_engine.py"],
    ),
    Mutation(
        "metrics-before-model",
        "finetune writes its metrics before the model (a failed model write leaves metrics that look valid)",
        "src/synthvit/training/stage.py",
        "        save_checkpoint(\n",
        "        write_json(metrics_path(name), summary)\n        save_checkpoint(\n",
        ["tests/unit/test_training_stage.py"],
    ),
    Mutation(
        "alias-always-moves",
        "the serving alias moves to every new version",
        "src/synthvit/tracking/registry.py",
        "    return math.isfinite(served) and served > score",
        "    return False",
        ["tests/unit/test_predict.py::test_the_serving_alias_never_moves_to_a_worse_model"],
    ),
    Mutation(
        "validation-leaks",
        "the validation images are trained on too",
        "src/synthvit/data/images.py",
        "return data.subset(~is_val), data.subset(is_val).in_memory(num_workers)",
        "return data, data.subset(is_val).in_memory(num_workers)",
        ["tests/unit/test_engine.py::test_the_validation_split_is_held_out_of_training"],
    ),
    Mutation(
        "unshuffled-control",
        "the shuffled-label control keeps the categories",
        "src/synthvit/data/fractals.py",
        "return dataclasses.replace(data, labels=data.labels[order])",
        "return data",
        ["tests/unit/test_synthetic_source.py"],
    ),
    Mutation(
        "no-timing-file",
        "a stage ends without its timing file",
        "src/synthvit/pipeline.py",
        "run.log_artifact(str(timing.write_timing(name, **stage.timing)))",
        "pass",
        ["tests/unit/test_tracking.py"],
    ),
    Mutation(
        "ece-off-by-a-bin",
        "confidences fall into the bin below",
        "src/synthvit/evaluation/calibration.py",
        "np.digitize(confidences, edges[1:-1], right=True)",
        "np.digitize(confidences, edges[1:-1], right=False)",
        ["tests/unit/test_calibration.py"],
    ),
    Mutation(
        "export-wrong-normalisation",
        "an exported model's config gives other mean and std",
        "src/synthvit/commands/export.py",
        '"mean": tuple(checkpoint["mean"])',
        '"mean": (0.485, 0.456, 0.406)',
        ["tests/unit/test_export.py"],
    ),
    Mutation(
        "pretrain-params-undeclared",
        "dvc.yaml's pretrain stage leaves out the pretrain section (a changed pretrain.lr re-runs nothing)",
        "dvc.yaml",
        "      - model\n      - pretrain\n",
        "      - model\n",
        ["tests/pipeline/test_dvc_deps.py::test_every_stage_declares_the_params_its_code_reads"],
    ),
    Mutation(
        "params-unchecked",
        "a stage writes its outputs after params.yaml changed under it (dvc.lock then lies)",
        "src/synthvit/config.py",
        "changed = first_difference(value_at(started_with, key), value_at(now, key), key)",
        "changed = None",
        ["tests/unit/test_training_stage.py"],
    ),
    Mutation(
        "mimetic-queries-only",
        "mimetic initialisation leaves the keys random, so W_q W_k^T is no identity",
        "src/synthvit/models.py",
        "weight[dim:][rows] = key.T",
        "pass",
        ["tests/unit/test_models.py"],
    ),
    Mutation(
        "heldout-is-trained-on",
        "the held-out fractal instances are instances training draws",
        "src/synthvit/synthetic/source.py",
        "return [self.system(category, HELDOUT_FIRST + k) for category in categories for k in range(per_class)]",
        "return [self.system(category, 1 + k) for category in categories for k in range(per_class)]",
        ["tests/unit/test_synthetic_source.py"],
    ),
    Mutation(
        "stale-readme",
        "the README's result tables are not regenerated from results/",
        "src/synthvit/commands/results.py",
        "return MARKER.sub(lambda m: f\"{m.group(1)}{document_table(m.group('group'))}{m.group(4)}\", text)",
        "return text",
        ["tests/unit/test_results.py"],
    ),
]


def run(mutation: Mutation) -> tuple[bool, float, str]:
    """(caught, seconds, what pytest said last) for one mutation on a fresh copy."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        tree = snapshot_repo(Path(tmp) / "tree")  # a git checkout, as the pipeline tests need
        target = tree / mutation.file
        text = target.read_text()
        if text.count(mutation.old) != 1:
            raise SystemExit(
                f"{mutation.name}: {mutation.file} holds the mutated text {text.count(mutation.old)} "
                "times, not once: update the mutation to the code as it is now"
            )
        target.write_text(text.replace(mutation.old, mutation.new))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(tree / "tests")])}
        # The copy lives in /tmp: the tests find the images beside this checkout, not beside the copy.
        images = find_cifar10()
        if images and "SYNTHVIT_CIFAR10" not in env:
            env["SYNTHVIT_CIFAR10"] = str(images)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        last = (result.stdout.strip().splitlines() or [""])[-1]
        if " passed" not in last and " failed" not in last:
            # Skipped (no images, no browser), nothing collected or only errors (a fixture that cannot start):
            # the mutation was not tested at all.
            raise SystemExit(f"{mutation.name}: its tests did not run ({last}); run them alone to see why")
        return result.returncode != 0, time.monotonic() - started, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name:28} {m.what}\n{'':28} caught by: {' '.join(m.tests)}")
        return 0
    caught = 0
    for mutation in chosen:
        killed, seconds, last = run(mutation)
        caught += killed
        print(f"{'caught  ' if killed else 'SURVIVED'} {mutation.name:28} {seconds:5.0f} s  {last}", flush=True)
    print(f"\n{caught} of {len(chosen)} mutations caught")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
