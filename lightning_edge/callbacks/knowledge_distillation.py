"""KnowledgeDistillation: teach any LightningModule's network from a frozen teacher, with no change to its code.

The callback wraps the module's ``training_step``: while the user's step runs, forward hooks on the student
network see its input (the teacher runs on it right then, before the student), its logits and the feature
maps at the chosen points; when the step returns its loss (a tensor, or a dict with ``"loss"``), the
distillation terms are added to that loss before Lightning calls ``backward``. The losses themselves are the pure-torch
modules of ``lightning_edge.distill``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_edge.callbacks.network import find_network
from lightning_edge.distill.registry import LossSpec, build_losses
from lightning_edge.distill.teacher import TeacherSpec, freeze, load_teacher
from lightning_edge.models.taps import FeatureTaps, first_tensor, parse_point_pairs, resolve_points

log = logging.getLogger(__name__)

TEACHER_PRECISIONS = {None: None, "32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


class KnowledgeDistillation(Callback):
    """Adds teacher-student distillation terms to the loss of the module's ``training_step``.

    Works under automatic optimisation on any LightningModule whose ``training_step`` runs the student
    network and returns its loss. The returned loss is replaced by
    ``w * loss + sum of the distillation terms``, where ``w = 1 - alpha`` of the KD loss (1 without one),
    and each term is logged as ``distill/NAME`` beside ``distill/total``.

    The teacher is frozen: eval mode (checked before every forward pass, since Lightning puts modules back
    in train mode between stages), no gradients, run under ``no_grad`` on the student's device on the very
    input the student received. Under DDP every rank runs its own teacher on its own shard.

    Args:
        teacher: an ``nn.Module`` (kept as ``self.teacher``, not copied), the path of a ClassificationModule
            checkpoint, or a mapping ``{"name": MODEL, "checkpoint": PATH, "num_classes": N, ...}``.
        losses: ``None`` (KD plus attention transfer), a list of registered names (``["kd", "at", "hint"]``)
            or modules, or a mapping ``name -> module | arguments``.
        points: feature maps the feature losses compare: ``"auto"`` pairs the last output of each resolution
            stage of student and teacher; or module paths: ``["layer2", "layer3"]`` (same in both),
            ``["conv5:layer3"]`` or ``[["conv5", "layer3"]]`` (student, teacher), or ``{"conv5": "layer3"}``.
        student: the student network: an attribute path in the module (``"net"``), the module itself, or
            ``None`` to use the first of ``self.net``, ``self.model``, ``self.student``, ``self.network``,
            else the LightningModule (then its ``training_step`` must call ``self(x)``).
        teacher_precision: ``None`` runs the teacher in the trainer's precision; ``"bf16"`` or ``"16"`` run it
            under autocast in that dtype to save time; ``"32"`` forces full precision.
    """

    def __init__(
        self,
        teacher: TeacherSpec,
        losses: Sequence[LossSpec] | Mapping[str, LossSpec | None] | None = None,
        points: str | Sequence[str | Sequence[str]] | Mapping[str, str] = "auto",
        student: str | nn.Module | None = None,
        teacher_precision: str | None = None,
    ):
        super().__init__()
        teacher_precision = None if teacher_precision is None else str(teacher_precision)
        if teacher_precision not in TEACHER_PRECISIONS:
            raise ValueError(f"teacher_precision must be one of None, '32', 'bf16', '16'; got {teacher_precision!r}")
        if not (isinstance(points, str) and points == "auto"):
            parse_point_pairs(points)  # a malformed list fails here, not at the first step
        self.teacher = freeze(load_teacher(teacher))
        self.losses = nn.ModuleDict(build_losses(losses))
        self.points = points
        self.student_spec = student
        self.teacher_precision = teacher_precision
        self.pairs: list[tuple[str, str, int, int]] | None = None  # (student path, teacher path, channels, channels)
        self._student: nn.Module | None = None
        self._student_path = ""
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None
        self._in_step = False
        self._resolving = False
        self._step_input: torch.Tensor | None = None
        self._step_logits: torch.Tensor | None = None
        self._teacher_output: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self._pending_state: dict[str, Any] | None = None
        self._teacher_fingerprint: str | None = None

    # ------------------------------------------------------------------ what the losses need
    @property
    def feature_losses(self) -> dict[str, nn.Module]:
        return {name: loss for name, loss in self.losses.items() if getattr(loss, "inputs", "features") != "logits"}

    @property
    def logit_loss(self) -> nn.Module | None:
        return next((loss for loss in self.losses.values() if getattr(loss, "inputs", "features") == "logits"), None)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the losses (the hint adapters), trained with the student."""
        return [parameter for parameter in self.losses.parameters() if parameter.requires_grad]

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                "KnowledgeDistillation adds its terms to the loss training_step returns, which manual optimisation "
                "ignores. Use automatic optimisation, or call the losses of lightning_edge.distill in your own step"
            )
        self._trainer, self._module = trainer, pl_module
        self._student_path, self._student = find_network(pl_module, self.student_spec, exclude=(self.teacher,))
        if self._student is self.teacher:
            raise ValueError("the teacher and the student are the same module; give a separate, trained teacher")
        freeze(self.teacher)
        self._teacher_fingerprint = _fingerprint(self.teacher)
        self._hooks = [
            self._student.register_forward_pre_hook(self._on_student_input, prepend=True),  # raw input, before QAT's
            self._student.register_forward_hook(self._on_student_output),
        ]
        self._wrap_training_step(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.teacher.to(pl_module.device)
        self.losses.to(pl_module.device)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None
        if self.feature_losses and self.pairs is None:
            example = self._example_input(trainer, pl_module)
            if example is not None:
                self._resolve(example)
        elif self.feature_losses and self._student_taps is None:
            self._install(self.pairs)  # a later fit with the same callback: same points, trained adapters kept

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        freeze(self.teacher)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        freeze(self.teacher)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        freeze(self.teacher)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # The adapters live outside the DDP-wrapped module, so their gradients are averaged here.
        if trainer.world_size > 1:
            for parameter in self.trainable_parameters():
                if parameter.grad is not None:
                    parameter.grad = trainer.strategy.reduce(parameter.grad, reduce_op="mean")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._remove_taps()
        pl_module.__dict__.pop("training_step", None)
        self._clear_step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "pairs": [list(pair) for pair in self.pairs] if self.pairs is not None else None,
            "losses": {name: loss.state_dict() for name, loss in self.losses.items()},
            "teacher_fingerprint": self._teacher_fingerprint,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called before the optimizers exist; on_fit_start rebuilds the adapters and joins them to the optimizer.
        self._pending_state = dict(state_dict)

    # ------------------------------------------------------------------ the student and the wrapped step
    def _wrap_training_step(self, pl_module: pl.LightningModule) -> None:
        if "training_step" in pl_module.__dict__:
            raise RuntimeError(
                "the LightningModule's training_step is already wrapped by another KnowledgeDistillation; use one "
                "callback with several losses"
            )
        original: Callable[..., Any] = pl_module.training_step

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            self._clear_step()
            self._in_step = True
            if self._student_taps is not None:
                self._student_taps.enabled = True
            try:
                output = original(*args, **kwargs)
            finally:
                self._in_step = False
                if self._student_taps is not None:
                    self._student_taps.enabled = False
            try:
                return self._add_distillation(output)
            finally:
                self._clear_step()

        pl_module.training_step = training_step

    def _on_student_input(self, module: nn.Module, args: tuple) -> None:
        if not self._in_step or self._resolving or self._step_input is not None:
            return
        example = first_tensor(args)
        if example is None:
            raise RuntimeError(f"the student network {self._student_name} was called without a tensor input")
        self._step_input = example
        if self.feature_losses and self.pairs is None:
            self._resolve(example[:1].detach())  # the first step of a run whose input shape was unknown before
        # The teacher runs before the student: its temporaries are freed before the student's activations
        # are allocated, which then reuse that memory instead of faulting in fresh pages (about 20% of a
        # ResNet-20 step on a 2-core CPU, measured by scripts/bench_distill_overhead.py).
        self._teacher_output = self._run_teacher(example)

    def _on_student_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._in_step and not self._resolving and self._step_logits is None:
            self._step_logits = first_tensor(output)

    def _clear_step(self) -> None:
        self._step_input = self._step_logits = self._teacher_output = None
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.clear()

    @property
    def _student_name(self) -> str:
        return f"'{self._student_path}'" if self._student_path else "(the LightningModule itself)"

    # ------------------------------------------------------------------ the distillation terms
    def _add_distillation(self, output: Any) -> Any:
        if output is None:
            return None  # the user skipped this batch
        if isinstance(output, torch.Tensor):
            loss = output
        elif isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor):
            loss = output["loss"]
        else:
            raise TypeError(
                f"KnowledgeDistillation needs training_step to return the loss tensor or a dict with 'loss', got "
                f"{type(output).__name__}"
            )
        if self._step_input is None or self._step_logits is None:
            raise RuntimeError(
                f"training_step returned a loss without running the student network {self._student_name}. "
                "Tell KnowledgeDistillation which module is the student: student='ATTRIBUTE_PATH'"
            )
        teacher_logits, teacher_features = self._teacher_output
        student_features = self._student_taps.take() if self._student_taps is not None else []
        logit_loss = self.logit_loss
        total = loss * (logit_loss.hard_weight if logit_loss is not None else 1.0)
        terms: dict[str, torch.Tensor] = {}
        for name, distillation_loss in self.losses.items():
            if getattr(distillation_loss, "inputs", "features") == "logits":
                term_of = getattr(distillation_loss, "soft_term", distillation_loss)
                term = term_of(self._step_logits, teacher_logits)
            else:
                term = distillation_loss(student_features, teacher_features)
            terms[name] = term
            total = total + term
        module = self._module
        for name, term in terms.items():
            module.log(f"distill/{name}", term.detach(), on_step=True, on_epoch=True)
        module.log("distill/total", total.detach(), on_step=True, on_epoch=True, prog_bar=True)
        if isinstance(output, torch.Tensor):
            return total
        return {**output, "loss": total}

    def _run_teacher(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        teacher = self.teacher
        if teacher.training:
            freeze(teacher)
        parameter = next(teacher.parameters(), None)
        if parameter is not None and parameter.device != inputs.device:
            teacher.to(inputs.device)
        dtype = TEACHER_PRECISIONS[self.teacher_precision]
        if dtype is None:
            precision = contextlib.nullcontext()
        else:
            precision = torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.no_grad(), precision:
            output = teacher(inputs.detach())
        logits = first_tensor(output)
        if logits is None:
            raise RuntimeError(f"the teacher returned {type(output).__name__}, not logits")
        features = self._teacher_taps.take() if self._teacher_taps is not None else []
        return logits.float(), [feature.float() for feature in features]

    # ------------------------------------------------------------------ feature points and adapters
    def _example_input(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
        example = pl_module.example_input_array
        if isinstance(example, torch.Tensor):
            return example[:1].to(pl_module.device)
        shape = getattr(trainer.datamodule, "input_shape", None) if trainer.datamodule is not None else None
        if isinstance(shape, Sequence) and len(shape) == 3:
            return torch.zeros((1, *shape), device=pl_module.device)
        return None  # resolved at the first training step, from the student's real input

    def _resolve(self, example: torch.Tensor) -> None:
        self._resolving = True
        try:
            pairs = resolve_points(self._student, self.teacher, self.points, example)
        finally:
            self._resolving = False
        rank_zero_info(
            "KnowledgeDistillation: feature points (student <- teacher): "
            + ", ".join(f"{student} <- {teacher}" for student, teacher in pairs)
        )
        self._install([(s.path, t.path, s.channels, t.channels) for s, t in pairs])

    def _install(self, pairs: list[tuple[str, str, int, int]]) -> None:
        """Tap the paired modules and build the losses' adapters, joined to the student's optimizer."""
        pairs = [tuple(pair) for pair in pairs]
        if self._student_taps is None or pairs != self.pairs:
            self._remove_taps()
            self._student_taps = FeatureTaps(self._student, [pair[0] for pair in pairs], "student")
            self._student_taps.enabled = self._in_step
            self._teacher_taps = FeatureTaps(self.teacher, [pair[1] for pair in pairs], "teacher")
        self.pairs = pairs
        # The adapters draw their initial weights from a fork of the generator: adding a hint loss, or
        # rebuilding the adapters on resume, leaves the run's random stream (shuffling, augmentation) as it was.
        with torch.random.fork_rng(devices=[]):
            for loss in self.feature_losses.values():
                configure = getattr(loss, "configure", None)
                if configure is not None:
                    configure([pair[2] for pair in self.pairs], [pair[3] for pair in self.pairs])
        device = self._module.device if self._module is not None else torch.device("cpu")
        self.losses.to(device)
        trainer = self._trainer
        if trainer is not None and self.trainable_parameters():
            if trainer.world_size > 1:
                weights = trainer.strategy.broadcast({k: v.cpu() for k, v in self.losses.state_dict().items()}, src=0)
                self.losses.load_state_dict(weights)
            _join_optimizer(trainer, self.trainable_parameters())

    def _remove_taps(self) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.remove()
        self._student_taps = self._teacher_taps = None

    def _restore(self, state: dict[str, Any]) -> None:
        pairs = [tuple(pair) for pair in state["pairs"]] if state.get("pairs") is not None else None
        if pairs is not None:
            if self.pairs is not None and [p[:2] for p in self.pairs] != [tuple(p[:2]) for p in pairs]:
                raise ValueError(f"the checkpoint distilled at {pairs}, this run at {self.pairs}: resume with the same points")
            self._install(pairs)
        for name, loss_state in state.get("losses", {}).items():
            if name in self.losses:
                self.losses[name].load_state_dict(loss_state)
        saved = state.get("teacher_fingerprint")
        if saved and self._teacher_fingerprint and saved != self._teacher_fingerprint:
            rank_zero_warn(
                "KnowledgeDistillation: the teacher's weights differ from those of the checkpoint's run; the resumed "
                "run will not continue as the original would have"
            )


def _join_optimizer(trainer: pl.Trainer, parameters: list[nn.Parameter]) -> None:
    """Add ``parameters`` to the first optimizer as a group like its first, and extend its LR schedulers."""
    if not trainer.optimizers:
        raise RuntimeError("KnowledgeDistillation's hint adapters need an optimizer; configure_optimizers returned none")
    optimizer = trainer.optimizers[0]
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    parameters = [p for p in parameters if id(p) not in known]
    if not parameters:
        return
    template = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    optimizer.add_param_group({**template, "params": parameters})
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if getattr(scheduler, "optimizer", None) is not optimizer:
            continue
        if isinstance(getattr(scheduler, "base_lrs", None), list):
            scheduler.base_lrs.append(template.get("initial_lr", template["lr"]))
        if isinstance(getattr(scheduler, "lr_lambdas", None), list):
            scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
        if isinstance(getattr(scheduler, "_last_lr", None), list):
            scheduler._last_lr.append(template["lr"])


def _fingerprint(module: nn.Module) -> str:
    """A hash of the module's weights and buffers, to notice a different teacher on resume."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
