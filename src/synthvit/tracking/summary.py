"""The headline of each pipeline execution, on its MLflow parent run.

MLflow's runs table shows a parent run's own params and metrics, not its children's: a
parent without them cannot be compared with another execution without expanding every
stage. So after each stage run ends, `record_stage` copies onto the parent:

- params: every key of params.yaml the execution used, flattened (`finetune.init`,
  `model.depth`, ...), which is what defines it (DVC does not change params.yaml during
  one); a fine-tuning that did not start from the pre-training leaves out its params
  (`used_params`);
- metrics, rounded as shown: `wall_<stage>_s` (from the stage's timing file) and the
  stage's headline results, read from the metrics file the stage just wrote:
  `pretrain_train_acc`, `pretrain_heldout_acc` (fractal instances no epoch drew), `finetune_train_acc`,
  `test_top1`, `test_top5`, `test_ece`; and
  finetune's held-out accuracy per epoch as `finetune_eval_acc`, so the UI's charts draw
  executions' curves together.

A stage that DVC skipped or restored from its cache logs no run; when finetune starts
from the pre-trained weights, the pre-training's accuracy and wall time are still
copied onto the parent, from the files DVC has just checked belong to those weights.

The experiment gets two tags for MLflow's UI: its kind (machine learning, not GenAI) and
a shared view of the runs table with these params and metrics as columns; `ui_url` links
to it. (MLflow 3.17's UI takes the kind from its own GenAI / Model training switch,
default GenAI, so the link also names `workflowType=machine_learning`.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from mlflow.entities import Metric, Param

from synthvit.files import from_pipeline_pretraining, metrics_path, timing_path

RESTORED_TAG = "synthvit.restored"  # on runs that `synthvit record-restored` made from DVC-restored outputs

# stage -> {key in its metrics file: metric name on the parent}; pretrain's held-out: instances no epoch drew
HEADLINES = {
    "pretrain": {"train_acc": "pretrain_train_acc", "eval_acc": "pretrain_heldout_acc"},
    "finetune": {"train_acc": "finetune_train_acc"},
    "evaluate": {"top1": "test_top1", "top5": "test_top5", "ece": "test_ece"},
}
HEADLINE_METRICS = [name for names in HEADLINES.values() for name in names.values()]
VIEW_KEY = "synthvit-headline"
# The runs table's columns in that view (MLflow's column ids): what defines and what answers an execution.
VIEW_METRICS = ("test_top1", "test_top5", "test_ece", "pretrain_heldout_acc", "wall_pretrain_s", "wall_finetune_s")
VIEW_PARAMS = ("finetune.init", "synthetic.kind", "data.name")
VIEW_STATE = {
    "selectedColumns": ["attributes.`Duration`"]
    + [f"metrics.`{name}`" for name in VIEW_METRICS]
    + [f"params.`{name}`" for name in VIEW_PARAMS],
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
}
# MLflow's experiment-kind tag with the value its UI calls "Machine learning" (genai_development lands on traces),
# and the view above, which the UI opens from `?viewStateShareKey=` (ui_url).
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(VIEW_STATE),
}


def execution_params(params_file: Path = Path("params.yaml")) -> dict[str, str]:
    """params.yaml flattened to `section.key` -> text, as MLflow stores params, less what the execution did not
    use ({} outside a pipeline)."""
    if not params_file.is_file():
        return {}
    return used_params(flatten(yaml.safe_load(params_file.read_text()) or {}))


def used_params(params: dict[str, str]) -> dict[str, str]:
    """Flattened params less the starting weights a fine-tuning did not use: an arm from scratch, mimetic or
    ImageNet weights never read the fractals, their pre-training or finetune.backbone, and only init=imagenet
    reads finetune.imagenet_weights. Params without finetune.init (the other stages' runs) keep the rest."""
    init = params.get("finetune.init", "pretrained")
    # Not from this pipeline's pre-training (also a released backbone): its fractals and pre-training did not make it.
    unused = () if from_pipeline_pretraining(init, params.get("finetune.backbone")) else ("synthetic.", "pretrain.")
    unused += ("finetune.backbone",) if init != "pretrained" else ()
    unused += ("finetune.imagenet_weights",) if init != "imagenet" else ()
    return {key: value for key, value in params.items() if not key.startswith(unused)}


def flatten(params: dict) -> dict:
    """A nested params mapping as `{"section.key": value}`: MLflow's param names, and the keys `dvc exp run -S`
    takes (lists stay values). The one flatten: reporting and results use it too."""
    return pd.json_normalize(params, sep=".").to_dict("records")[0] if params else {}


def headline_metrics(stage: str, params: dict[str, str]) -> dict[str, float]:
    """The stage's headline results and wall time from the files it wrote (metrics/<stage>.json and its
    timing file), and pre-training's for a finetune that starts from it (also when DVC restored the
    pre-training from its cache: its files are the run's). Rounded as the runs table shows them."""
    sources = [stage]
    if stage == "finetune" and from_pipeline_pretraining(params.get("finetune.init"), params.get("finetune.backbone")):
        sources.insert(0, "pretrain")
    metrics = {}
    for source in sources:
        path = metrics_path(source)
        if source in HEADLINES and path.is_file():
            values = json.loads(path.read_text())
            metrics.update(
                {name: round(float(values[key]), 4) for key, name in HEADLINES[source].items() if key in values}
            )
        timing = timing_path(source)
        if timing.is_file() and "wall_seconds" in (seconds := json.loads(timing.read_text())):
            metrics[f"wall_{source}_s"] = round(float(seconds["wall_seconds"]), 1)
    return metrics


def record_stage(client, parent_id: str, stage: str, stage_run_id: str) -> None:
    """Copy the execution's params and this stage's wall time and headline metrics onto the parent run."""
    params = execution_params()
    run = client.get_run(stage_run_id).info
    metrics = headline_metrics(stage, params)
    # MlflowClient.log_batch sends params in MLflow's batches of 100; one logged again with the same value is accepted.
    items = [Param(key, str(value)) for key, value in params.items()]
    points = [Metric(key, value, run.end_time or 0, 0) for key, value in metrics.items()]
    if stage == "finetune":
        points += [
            Metric("finetune_eval_acc", m.value, m.timestamp, m.step)
            for m in client.get_metric_history(stage_run_id, "eval_acc")
        ]
    client.log_batch(parent_id, metrics=points, params=items)


def tag_experiment(client, experiment) -> None:
    """Set the UI tags the experiment lacks (also on experiments made by earlier versions)."""
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def ui_url(uri: str, experiment_id: str) -> str:
    """Where the UI shows the experiment's executions with their headline columns."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
