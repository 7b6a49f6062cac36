"""Shared test fixtures: composing the Hydra config like train.py does, and small on-disk data sets."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIGHTNING_EDGE_ROOT", str(ROOT))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning_edge.models  # noqa: E402,F401  (registers our models with timm)
import pytorch_lightning as pl  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lightning_edge.data.synthetic import SyntheticDataModule  # noqa: E402
from lightning_edge.models import create_model, derive_student  # noqa: E402

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
RECIPES = sorted(path.stem for path in (ROOT / "recipes" / "recipe").glob("*.yaml"))

# Small, fast settings for a run that only has to prove the pipeline works.
QUICK = [
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
]
# train.py on synthetic 1x28x28 data with a ResNet-20: the quickest real run of the whole application
SYNTHETIC = ["data=synthetic", "data.crop_padding=2", "model.name=cifar_resnet20", "logger=csv", *QUICK]


def write_rank_record(path: str, trainer, record: dict) -> None:
    """A probe's per-rank record, PATH.rankN.json, for a DDP test to compare ranks."""
    import json

    with open(f"{path}.rank{trainer.global_rank}.json", "w") as handle:
        json.dump(record, handle)


class StopAfterEpochs(Callback):
    """Interrupts training after ``epochs`` epochs, as a preempted job stops, keeping the configured schedule."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class SaveFinalWeights(Callback):
    """Writes the network's weights when fit ends, to compare two runs exactly."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), self.path)


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml with ``overrides`` as train.py would, writing into ``output_dir``."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[*overrides, f"paths.output_dir={output_dir}", f"paths.log_dir={output_dir}"],
        )


def write_cifar10(root: Path, train_per_file: int = 40, test: int = 40) -> Path:
    """A small copy of CIFAR-10 in torchvision's exact pickle layout (random pixels, balanced labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = test if name == "test_batch" else train_per_file
        batch = {
            b"batch_label": name.encode(),
            b"labels": [i % 10 for i in range(count)],
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(count)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return root


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "cifar")


requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (scripts/setup.sh does)",
)


class TeacherProbe(Callback):
    """Records, per DDP rank, how often the distillation teacher ran and on what, plus the adapters' weights."""

    def __init__(self, path: str):
        self.path = path
        self.calls: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        from lightning_edge.callbacks import KnowledgeDistillation

        self.distillation = next(c for c in trainer.callbacks if isinstance(c, KnowledgeDistillation))
        self.distillation.teacher.register_forward_pre_hook(lambda module, args: self.calls.append(float(args[0].sum())))

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "teacher_inputs": self.calls,
            "teacher_training": self.distillation.teacher.training,
            "adapters": [float(p.double().sum()) for p in self.distillation.trainable_parameters()],
            "student": float(sum(p.double().sum() for p in pl_module.parameters())),
        }
        write_rank_record(self.path, trainer, record)


class QuantProbe(Callback):
    """Records, per DDP rank, every quantizer's scale and zero point after each step, and the sums of its own batches."""

    def __init__(self, path: str):
        self.path = path
        self.scales: list[list[float]] = []
        self.zero_points: list[list[int]] = []
        self.batch_sums: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_sums.append(float(batch[0].double().sum()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lightning_edge.quant import activation_quantizers

        quantizers = list(activation_quantizers(pl_module.net))
        self.scales.append([float(quantizer.scale) for quantizer in quantizers])
        self.zero_points.append([int(quantizer.zero_point) for quantizer in quantizers])

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "scales": self.scales,
            "zero_points": self.zero_points,
            "batch_sums": self.batch_sums,
        }
        write_rank_record(self.path, trainer, record)


def qat_resnet_on_fashion_mnist():
    """A ResNet-20 trained 60 float steps then 30 QAT steps on Fashion-MNIST: (its eval-mode network, the data).

    Enough learning that comparisons of predictions are between real decisions, not constant guesses.
    """
    import pytorch_lightning as pl

    from lightning_edge.callbacks import QuantizationAwareTraining
    from lightning_edge.data.fashion_mnist import FashionMNISTDataModule
    from lightning_edge.models import create_model
    from lightning_edge.module import ClassificationModule

    torch.manual_seed(0)
    data = FashionMNISTDataModule(batch_size=64, eval_batch_size=250, crop_padding=2, val_size=1000)
    module = ClassificationModule(create_model("cifar_resnet20", num_classes=10, in_chans=1))
    settings = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0, max_epochs=1)
    pl.Trainer(limit_train_batches=60, **settings).fit(module, datamodule=data)
    pl.Trainer(limit_train_batches=30, callbacks=[QuantizationAwareTraining()], **settings).fit(module, datamodule=data)
    data.setup("test")
    return module.net.eval(), data


class UserModule(pl.LightningModule):
    """A typical user module: ``self.net`` inside, ``training_step`` returning the loss tensor."""

    def __init__(self, net: nn.Module | None = None):
        super().__init__()
        self.net = net or create_model("cifar_resnet20", num_classes=10, in_chans=1)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.net(images), labels)
        self.log("user_loss", loss, on_step=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", F.cross_entropy(self.net(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def synthetic_data(**kwargs) -> SyntheticDataModule:
    """Small synthetic 1x28x28 data for callback tests: 96 training and 32 test images, batches of 16."""
    kwargs = {"native_channels": 1, "native_size": 28, "train_samples": 96, "test_samples": 32, "batch_size": 16, "num_workers": 0, **kwargs}
    return SyntheticDataModule(**kwargs)


def quick_trainer(*callbacks: Callback, **kwargs) -> pl.Trainer:
    """A one-epoch CPU Trainer that logs and checkpoints nothing, for callback tests."""
    settings = dict(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=2,
    )
    return pl.Trainer(callbacks=list(callbacks), **{**settings, **kwargs})


def calibrated_network(name: str = "cifar_resnet20", config: dict | None = None, seed: int = 0, **kwargs) -> nn.Module:
    """``name`` for 1x28x28 inputs with BatchNorm statistics of its own, calibrated (PTQ) on random batches."""
    from lightning_edge.quant import calibrate

    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_chans=1, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 28, 28))
    return calibrate(model.eval(), [torch.randn(16, 1, 28, 28) for _ in range(2)], num_batches=2, config=config)


class MaskProbe(Callback):
    """Records, per DDP rank, a digest of every pruning mask after each step, and the masks' mean."""

    def __init__(self, path: str):
        self.path = path
        self.digests: list[str] = []
        self.kept: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import hashlib

        from lightning_edge.prune import MASK_NAME

        masks = [buffer for name, buffer in pl_module.named_buffers() if name.endswith(MASK_NAME)]
        digest = hashlib.sha256()
        for mask in masks:
            digest.update(mask.detach().cpu().numpy().tobytes())
        self.digests.append(digest.hexdigest())
        self.kept.append(float(sum(mask.sum() for mask in masks) / sum(mask.numel() for mask in masks)))

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {"world_size": trainer.world_size, "global_step": trainer.global_step, "digests": self.digests,
                  "kept": self.kept}
        write_rank_record(self.path, trainer, record)


def ddp_train_records(tmp_path: Path, overrides: list[str], probe: str) -> list[dict]:
    """Run train.py on synthetic data with DDP on two CPU processes (gloo) and the probe callback ``probe``
    (a class here, given ``path``); return the record each rank's probe wrote."""
    import json
    import subprocess

    record = tmp_path / "probe"
    command = [
        sys.executable, "train.py", *SYNTHETIC, "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_epochs=1",
        "data.num_workers=0", *overrides, f"+callbacks.probe._target_=conftest.{probe}", f"+callbacks.probe.path={record}",
        f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", "test=false",
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"probe.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    return ranks


class WeightsProbe(Callback):
    """Records, per DDP rank, a digest of the network's state dict and its MACs at the end of fit."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_end(self, trainer, pl_module) -> None:
        import hashlib

        from lightning_edge.models.profile import count_macs

        digest = hashlib.sha256()
        for key, tensor in sorted(pl_module.net.state_dict().items()):
            digest.update(key.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        record = {"world_size": trainer.world_size, "global_step": trainer.global_step, "digest": digest.hexdigest(),
                  "macs": count_macs(pl_module.net, trainer.datamodule.input_shape)}
        write_rank_record(self.path, trainer, record)


# Every family pruning supports: our ResNet and WRN, a Moonshine student, a timm ResNet, MobileNetV2.
FAMILIES = ["cifar_resnet20", "cifar_wrn_16_2", "moonshine_g4", "resnet18", "mobilenetv2_100"]


def family(name: str) -> nn.Module:
    """A supported family on 1x32x32 inputs, with BatchNorm statistics and affine parameters not at their
    defaults (so a wrong slice shows in the outputs)."""
    torch.manual_seed(0)
    if name == "moonshine_g4":
        model = derive_student(create_model("cifar_resnet20", num_classes=10, in_chans=1), block="G(4)")
        model = model[0] if isinstance(model, tuple) else model
    else:
        model = create_model(name, num_classes=10, in_chans=1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()
