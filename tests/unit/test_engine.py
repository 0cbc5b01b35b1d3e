import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from helpers.training import bright_vs_dark, plain_recipe
from synthvit.config import ModelConfig, RuntimeConfig, TrainConfig, parse_params
from synthvit.data.images import FileImages, TensorImages, split_validation
from synthvit.errors import UserError
from synthvit.evaluation.inference import predict_logits
from synthvit.models import create_model
from synthvit.runtime import autocast_dtype, seed_everything
from synthvit.training import engine
from synthvit.training.engine import build_schedule, steps_per_epoch, train
from synthvit.training.resume import read_state, resume_path, training_fingerprint

TINY = ModelConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
CPU = RuntimeConfig(device="cpu")


def test_schedule_warmup_then_cosine():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = TrainConfig(epochs=10, lr=0.1, min_lr=0.001, warmup_epochs=2)
    schedule = build_schedule(optimizer, cfg, total_steps=100, steps_each_epoch=10)

    def lr_at(step):
        schedule.step_update(step)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(0.001)
    assert lr_at(10) == pytest.approx(0.001 + (0.1 - 0.001) * 10 / 20)  # halfway through warmup
    assert lr_at(20) == pytest.approx(0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * 20 / 100)))
    assert lr_at(50) == pytest.approx(0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100) == pytest.approx(0.001)


def test_steps_per_epoch():
    assert steps_per_epoch(1000, 256) == (3, 256)
    assert steps_per_epoch(7, 256) == (1, 6)  # tiny set: one even batch
    with pytest.raises(UserError, match="at least 2"):
        steps_per_epoch(1, 256)


def test_training_learns_and_is_deterministic():
    cfg = plain_recipe(epochs=4, batch_size=32, lr=2e-3, label_smoothing=0.0, crop_scale=[0.8, 1.0])
    data = bright_vs_dark()
    runs = []
    for _ in range(2):
        seed_everything(1)  # model init draws from the global generator
        model = create_model(TINY, num_classes=2)
        runs.append((train(model, data, cfg, CPU, seed=1, eval_set=bright_vs_dark(seed=9)), model))
    (history, model), (again, _) = runs
    assert history[-1]["eval_acc"] >= 0.95
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in again]
    logits = predict_logits(model, data.images, torch.device("cpu"), batch_size=50)
    assert logits.shape == (128, 2) and (logits.argmax(1) == data.labels).float().mean() >= 0.95


def test_training_with_mixup_cutmix_and_erasing_mixes_what_it_trains_on():
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_epochs=0)  # the full recipe's augmentations
    data = bright_vs_dark(64)
    seed_everything(0)
    loop = engine.Loop(create_model(TINY, 2), data, cfg, CPU, seed=0, desc="mixed", num_workers=0)
    assert type(loop.criterion).__name__ == "SoftTargetCrossEntropy"
    batch, labels = data.images[:16], data.labels[:16]
    x, targets = loop.augmentation(batch, labels, loop.generators["augment"])
    assert targets.shape == (16, 2) and torch.allclose(targets.sum(1), torch.ones(16))
    # Mixed pairs: no target is one class alone (label smoothing 0.1 and mixing both move it off 0.95).
    assert (targets.max(1).values < 0.95).all()
    plain = (batch.float() / 255 - 0.5) / 0.5
    assert not torch.allclose(x, plain)  # images were mixed, cut, erased or cropped
    history = engine.train(create_model(TINY, 2), data, cfg, CPU, seed=0)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert history[0]["lr"] == pytest.approx(cfg.min_lr)


def test_precision_defaults():
    assert autocast_dtype(RuntimeConfig(), torch.device("cpu")) is None  # CPU: fp32
    assert autocast_dtype(RuntimeConfig(), torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(RuntimeConfig(precision="fp32"), torch.device("cuda")) is None


class Stop(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    """Stopped after epoch 2 and resumed: same history and weights as an uninterrupted run."""
    cfg = TrainConfig(
        epochs=4,
        batch_size=16,
        lr=1e-3,
        warmup_epochs=1,
        checkpoint_every=1,
        ema_decay=0.9,
        layer_decay=0.75,
        crop_scale=[0.5, 1.0],
        crop_padding=2,
    )  # every stateful part on: all must resume
    runtime = RuntimeConfig(device="cpu", deterministic=True)
    data = bright_vs_dark(64)

    seed_everything(0)
    straight = create_model(TINY, 2)
    expected = train(straight, data, cfg, runtime, seed=0, resume_file=tmp_path / "a.pt")
    # The final state stays until the caller has written its outputs (training/stage.py removes it).
    assert read_state(tmp_path / "a.pt")["epoch"] == 4

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Stop

    seed_everything(0)
    with pytest.raises(Stop):
        train(create_model(TINY, 2), data, cfg, runtime, seed=0, resume_file=tmp_path / "b.pt", on_epoch=stop_after_two)
    assert (tmp_path / "b.pt").exists()
    seed_everything(0)
    resumed = create_model(TINY, 2)
    history = train(resumed, data, cfg, runtime, seed=0, resume_file=tmp_path / "b.pt")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in expected]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # A run stopped after its last epoch (say, by a full disk while writing the model) trains nothing again.
    seed_everything(0)
    finished = create_model(TINY, 2)
    assert (
        train(
            finished,
            data,
            cfg,
            runtime,
            seed=0,
            resume_file=tmp_path / "a.pt",
            on_epoch=lambda metrics: pytest.fail("trained again"),
        )
        == expected
    )
    for (name, a), b in zip(straight.state_dict().items(), finished.state_dict().values()):
        assert torch.equal(a, b), name


def test_ema_weights_replace_the_raw_ones():
    """A decay near 1 keeps the averaged weights near their start (timm's EMA copies the weights at its
    first update, after one optimizer step), while raw training moves them on."""
    cfg = plain_recipe(epochs=4, batch_size=16, lr=5e-3)
    seed_everything(0)
    start = create_model(TINY, 2)
    initial = {k: v.clone() for k, v in start.state_dict().items()}
    raw = train(start, bright_vs_dark(64), cfg, CPU, seed=0)
    moved = max((start.state_dict()[k] - v).abs().max().item() for k, v in initial.items())
    seed_everything(0)
    averaged = create_model(TINY, 2)
    train(averaged, bright_vs_dark(64), TrainConfig(**{**cfg.__dict__, "ema_decay": 0.999999}), CPU, seed=0)
    stayed = max((averaged.state_dict()[k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3 and stayed < moved / 3
    assert len(raw) == 4


def test_keep_best_restores_the_best_validation_epoch():
    """The kept weights are those of the first epoch with the best validation accuracy."""
    from synthvit.data.images import split_validation

    data = bright_vs_dark(128)
    train_part, val = split_validation(data, 0.25, seed=0)
    assert len(val) == 32 and torch.bincount(val.labels).tolist() == [16, 16]
    cfg = plain_recipe(epochs=5, batch_size=16, lr=2e-3, label_smoothing=0.0)
    seed_everything(0)
    model = create_model(TINY, 2)
    history = train(model, train_part, cfg, CPU, seed=0, eval_set=val, keep_best=True)
    selected = [h for h in history if h["selected"]]
    assert len(selected) == 1
    best = max(h["eval_acc"] for h in history)
    assert selected[0]["eval_acc"] == best and selected[0]["epoch"] == min(
        h["epoch"] for h in history if h["eval_acc"] == best
    )
    logits = predict_logits(model, val.images, torch.device("cpu"))
    assert (logits.argmax(1) == val.labels).float().mean().item() == pytest.approx(best)


def test_streamed_image_folder_trains_exactly_like_the_in_memory_one(tmp_path):
    """data.loader=stream: DataLoader workers decode the files; same batches, same weights."""
    from PIL import Image

    from synthvit.config import DataConfig
    from synthvit.data.images import load_split

    data = bright_vs_dark(n=48)
    for split in ("train", "test"):
        for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
            folder = tmp_path / split / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    memory_cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    in_memory = load_split(memory_cfg, "train", img_size=16)
    streamed = load_split(DataConfig(name="imagefolder", root=str(tmp_path), loader="stream"), "train", img_size=16)
    assert (
        isinstance(streamed, FileImages)
        and isinstance(in_memory, TensorImages)
        and len(streamed) == len(in_memory) == 48
    )
    cfg = TrainConfig(
        epochs=2,
        batch_size=16,
        lr=1e-3,
        warmup_epochs=0,
        mixup_alpha=0,
        cutmix_alpha=0,
        random_erasing=0.5,
        auto_augment="trivialaugment",
        crop_padding=2,
        checkpoint_every=0,
    )
    weights = []
    for source, workers in ((in_memory, 0), (streamed, 2)):
        seed_everything(0)
        model = create_model(TINY, num_classes=2)
        history = train(model, source, cfg, CPU, seed=0, num_workers=workers)
        weights.append(model.state_dict())
        assert len(history) == 2
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


class HostReads(TorchFunctionMode):
    """Counts the tensor calls that copy a value to Python (item, tolist, bool(), float(), ...).

    On a GPU each one waits until the device has finished all queued work. A TorchFunctionMode
    sees every such call made from Python during training, in synthvit, timm, torchvision or
    torch itself, so the count is the number of host syncs the same run would make on CUDA.
    """

    READS = {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__bool__,
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.__index__,
        torch.Tensor.numpy,
        torch.Tensor.cpu,
        torch.Tensor.nonzero,
        torch.nonzero,
    }

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


def host_reads_in_one_epoch(images: int, **recipe) -> int:
    # The full recipe's stateful and random parts (Mixup/CutMix, erasing, crop/flip, EMA, clipping) but
    # torchvision's auto-augment policies, which draw their ops with .item() on CPU tensors (no device sync).
    cfg = TrainConfig(
        epochs=1, batch_size=16, lr=1e-3, warmup_epochs=0, ema_decay=0.9, grad_clip=1.0, checkpoint_every=0, **recipe
    )
    seed_everything(0)
    model = create_model(TINY, 2)
    with HostReads() as reads:
        train(model, bright_vs_dark(images), cfg, CPU, seed=0)
    return reads.count


def test_the_training_step_never_waits_for_the_device(monkeypatch):
    """Host syncs per epoch do not grow with the number of steps: the loss and accuracy are read
    once at the end of the epoch, plus once every LOG_EVERY steps."""
    assert host_reads_in_one_epoch(64) == host_reads_in_one_epoch(192) == 2  # 4 and 12 steps
    monkeypatch.setattr(engine, "LOG_EVERY", 4)
    assert host_reads_in_one_epoch(192) == 2 + 12 // 4


def test_a_diverged_loss_stops_training_with_one_line():
    seed_everything(0)
    model = create_model(TINY, 2)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0, checkpoint_every=0)
    with pytest.raises(UserError, match=r"training diverged: the loss is nan in epoch 1; lower the lr"):
        train(model, bright_vs_dark(64), cfg, CPU, seed=0)


def test_fp16_steps_through_a_loss_scaler_and_other_precisions_do_not():
    """fp16 gradients underflow unscaled: fp16 gets torch.amp.GradScaler, bf16/fp32 a pass-through."""
    cfg = plain_recipe(epochs=2, batch_size=16, lr=2e-3)
    seed_everything(0)
    loop = engine.Loop(
        create_model(TINY, 2),
        bright_vs_dark(64),
        cfg,
        RuntimeConfig(device="cpu", precision="fp16"),
        seed=0,
        desc="fp16",
        num_workers=0,
    )
    assert loop.scaler.is_enabled() and loop.amp_dtype is torch.float16
    first, second = engine.train_one_epoch(loop, 1), engine.train_one_epoch(loop, 2)
    assert math.isfinite(first["train_loss"]) and second["train_loss"] < first["train_loss"]
    fp32 = engine.Loop(create_model(TINY, 2), bright_vs_dark(64), cfg, CPU, seed=0, desc="fp32", num_workers=0)
    assert not fp32.scaler.is_enabled()


def test_a_resume_state_is_only_for_the_recipe_data_and_weights_it_was_saved_from():
    params = parse_params({})
    data, other_data = bright_vs_dark(32), bright_vs_dark(32, seed=1)
    seed_everything(0)
    model = create_model(TINY, 2)

    def path(cfg=params.finetune, train_set=data, weights=model, seed=0):
        return resume_path("finetune", training_fingerprint(weights, train_set, cfg, params, seed))

    assert path() == path()  # the same inputs find their state again
    seed_everything(1)
    others = {
        path(cfg=params.finetune.model_copy(update={"lr": 5e-4})),
        path(train_set=other_data),
        path(weights=create_model(TINY, 2)),
        path(seed=1),  # another fine-tuning seed: another order and augmentation
    }
    assert path() not in others and len(others) == 4


def test_the_validation_split_is_held_out_of_training():
    data = bright_vs_dark(40)
    train_set, val_set = split_validation(data, 0.25, seed=0)
    assert len(train_set) == 30 and len(val_set) == 10
    assert val_set.labels.bincount().tolist() == [5, 5]  # a quarter of each class
    rows = {tuple(image.flatten().tolist()) for image in train_set.images}
    assert not rows & {tuple(image.flatten().tolist()) for image in val_set.images}  # no image in both
    assert torch.equal(split_validation(data, 0.25, seed=0)[1].images, val_set.images)  # seeded
