"""The shared training loop: one Accelerate loop used by every method, diffusion and classifier alike.

A method supplies ``compute_loss(model, batch) -> loss`` (pass a function or subclass and override it) and, if it
needs one, an ``after_step(trainer)`` hook that runs after every optimizer step (a saliency mask uses it to restore
frozen weights). Everything else is here once: gradient accumulation, mixed precision with fp32 trainable parameters,
clipping, diffusers' LR schedulers, training a selected parameter subset, gradient checkpointing of the trained module
(``gradient_checkpointing``: activations recomputed in the backward pass instead of kept, for less memory),
``checkpoint-{step}`` folders with a total limit, ``resume_from_checkpoint latest|PATH``, a progress bar on the main
process, optional trackers and seeding.

The same code runs in one process, under ``accelerate launch`` and under ``torchrun``: each process gets different
batches, gradients are averaged, and every rank ends with the same parameters.

Exact resumption: the data order of epoch ``e`` is a pure function of ``(seed, e)`` (the loader's random or
sequential sampler is replaced by :class:`EpochSampler`) and the loader draws its worker seeds from its own
generator, so restoring a checkpoint's RNG states and skipping the batches already seen reproduces the uninterrupted
run bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedType, LoggerType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler
from tqdm.auto import tqdm

from concept_erase.core.config import NON_NEGATIVE, Range, check_numbers, config_to_dict
from concept_erase.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError, EmptyDataError, excerpt
from concept_erase.core.io import strict_json
from concept_erase.core.parameters import Selection, select_parameters
from concept_erase.core.tensorfile import save_tensors

__all__ = [
    "Trainer",
    "TrainerConfig",
    "TrainResult",
    "EpochSampler",
    "check_gradient_checkpointing",
    "find_checkpoint",
    "read_trainer_state",
]

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_STATE_FILE = "trainer_state.json"
_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "piecewise_constant",
)


@dataclass
class TrainerConfig:
    """Hyper-parameters of the shared loop. Names follow diffusers' training scripts."""

    output_dir: str | None = None  # where checkpoint-{step} folders go; None disables checkpointing
    max_train_steps: int = 100  # optimizer updates (not micro-batches)
    learning_rate: float = 1e-4
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    sgd_momentum: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time
    max_grad_norm: float | None = 1.0  # None or 0 disables clipping
    checkpointing_steps: int | None = None
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint directory
    report_to: str | None = None  # "tensorboard", "wandb", "all", ... ; None/"none" disables trackers
    tracker_project_name: str = "concept-erase"
    logging_dir: str = "logs"
    seed: int | None = 0
    trainable_params: list[str] | None = None  # regex patterns (re.search) on parameter names
    show_progress: bool = True

    NUMBER_RANGES: ClassVar[dict] = {
        "learning_rate": NON_NEGATIVE,
        "adam_beta1": Range(0, 1, high_open=True),
        "adam_beta2": Range(0, 1, high_open=True),
    }

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.lr_scheduler not in _SCHEDULERS:
            raise ConfigError(
                f"lr_scheduler: invalid value {excerpt(self.lr_scheduler)}; accepted values: {', '.join(_SCHEDULERS)}"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(
                f"mixed_precision: invalid value {excerpt(self.mixed_precision)}; accepted values: no, fp16, bf16"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(
                f"gradient_checkpointing: invalid value {excerpt(self.gradient_checkpointing)}; accepted values: "
                "true, false"
            )
        if self.report_to in ("none", ""):
            self.report_to = None


@dataclass
class TrainResult:
    global_step: int
    losses: list[float]
    seconds: float
    trained_parameters: list[str]
    resumed_from: str | None = None
    samples_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


class EpochSampler(Sampler[int]):
    """Deterministic sampler: epoch ``e`` yields ``randperm(n)`` seeded by ``(seed, e)`` (or ``range(n)``)."""

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0):
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def find_checkpoint(output_dir: str | Path | None, spec: str) -> Path | None:
    """Resolve ``"latest"`` (highest ``checkpoint-{step}`` in ``output_dir``; None when there is none) or a path."""
    if spec == "latest":
        if output_dir is None or not Path(output_dir).is_dir():
            return None
        steps = sorted(
            (int(m.group(1)), p)
            for p in Path(output_dir).iterdir()
            if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
        )
        return steps[-1][1] if steps else None
    path = Path(spec)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file, not a checkpoint directory")
    if not path.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory not found: {path}")
    return path


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint directory ``path``, checked: a missing, truncated, non-JSON file or a
    missing / mistyped counter raises :class:`CheckpointError` naming the file and what is wrong."""
    state_file = Path(path) / _STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {_STATE_FILE} is missing")
    try:
        state = json.loads(state_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"checkpoint state {state_file} is corrupt: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint state {state_file} is corrupt: not valid JSON ({exc.msg})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint state {state_file}: {exc.strerror or exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint state {state_file} is corrupt: expected a JSON object, got {type(state).__name__}"
        )
    for key in ("global_step", "micro_batches"):
        if key not in state:
            raise CheckpointError(f"checkpoint state {state_file} is corrupt: {key!r} is missing")
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(
                f"checkpoint state {state_file} is corrupt: {key!r} must be a non-negative integer, got {value!r}"
            )
    return state


# The switch's spellings: (enable, disable, whether on). diffusers' ModelMixin; transformers' PreTrainedModel from
# 5.2x (which deprecates the older names) and before.
_CHECKPOINTING_SWITCHES = (
    ("enable_gradient_checkpointing", "disable_gradient_checkpointing", "is_gradient_checkpointing"),
    ("activation_checkpointing_enable", "activation_checkpointing_disable", "is_activation_checkpointing"),
    ("gradient_checkpointing_enable", "gradient_checkpointing_disable", "is_gradient_checkpointing"),
)


def check_gradient_checkpointing(module: torch.nn.Module) -> tuple[str, str, str]:
    """The names of ``module``'s gradient-checkpointing ``(enable, disable, is_on)`` (a diffusers or transformers
    model); a module that has none raises :class:`ConfigError` naming its class."""
    supported = getattr(module, "_supports_gradient_checkpointing", True) and getattr(
        module, "supports_gradient_checkpointing", True
    )
    for names in _CHECKPOINTING_SWITCHES:
        if supported and callable(getattr(module, names[0], None)):
            return names
    raise ConfigError(
        f"gradient_checkpointing: {type(module).__name__} does not support gradient checkpointing (no "
        "enable_gradient_checkpointing() as diffusers models have); set gradient_checkpointing false"
    )


@contextlib.contextmanager
def _checkpointing(module: torch.nn.Module, wanted: bool) -> Iterator[None]:
    """Gradient checkpointing on inside the block when ``wanted``; afterwards the module is as it was found."""
    if not wanted:
        yield
        return
    enable, disable, is_on = check_gradient_checkpointing(module)
    if getattr(module, is_on, False):
        yield
        return
    getattr(module, enable)()
    try:
        yield
    finally:
        getattr(module, disable)()


class Trainer:
    """Train ``model`` in place on ``train_dataloader`` with the loss returned by ``compute_loss``.

    Args:
        model: the module to train; parameters not selected stay frozen (their ``requires_grad`` is restored after).
            With ``config.gradient_checkpointing`` it must be a diffusers or transformers model (else
            :class:`ConfigError` here); checkpointing is switched on for training and off again after.
        config: a :class:`TrainerConfig`.
        train_dataloader: a ``torch.utils.data.DataLoader``; it is rebuilt with a deterministic sampler, never mutated.
        compute_loss: ``fn(model, batch) -> scalar tensor``; or subclass and override :meth:`compute_loss`.
        after_step: ``fn(trainer)`` called after every optimizer step (before checkpointing).
        trainable: overrides ``config.trainable_params``: regex patterns or ``fn(module_name, module) -> bool``.
        extra_state: objects with ``state_dict()/load_state_dict()`` of tensors saved in every checkpoint.
        progress_desc: the progress bar's label (``config.show_progress``), e.g. the phase of a longer job.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainerConfig,
        train_dataloader: DataLoader,
        compute_loss: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
        after_step: Callable[[Trainer], None] | None = None,
        trainable: Selection = None,
        extra_state: dict[str, Any] | None = None,
        progress_desc: str = "training",
    ):
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(config).__name__}")
        if not isinstance(train_dataloader, DataLoader):
            raise TypeError(f"train_dataloader must be a torch DataLoader, got {type(train_dataloader).__name__}")
        if len(train_dataloader) == 0:
            raise EmptyDataError("the training data loader is empty: there is nothing to train on")
        if config.gradient_checkpointing:
            check_gradient_checkpointing(model)
        self.config = config
        self.model = model
        self.train_dataloader = train_dataloader
        self._compute_loss = compute_loss
        self.after_step = after_step
        self.trainable = trainable if trainable is not None else config.trainable_params
        self.extra_state = dict(extra_state or {})
        self.progress_desc = progress_desc
        self.global_step = 0
        self.accelerator = None
        self.last_loss: float | None = None

    # ------------------------------------------------------------------ extension point
    def compute_loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Return the scalar loss of ``batch``. Pass ``compute_loss=`` or override this in a subclass."""
        if self._compute_loss is None:
            raise NotImplementedError("pass compute_loss=fn(model, batch) to Trainer or override Trainer.compute_loss")
        return self._compute_loss(model, batch)

    # ------------------------------------------------------------------ setup
    def _make_accelerator(self):

        # Several trainers may run in one process with different settings: start from a fresh shared state
        # (the distributed process group, held by PartialState, is kept).
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        cfg = self.config
        project = None
        if cfg.output_dir is not None:
            project = ProjectConfiguration(
                project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / cfg.logging_dir)
            )
        _check_trackers(cfg.report_to)
        accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=cfg.report_to,
            project_config=project,
            rng_types=[],
        )
        return accelerator

    def _rebuild_dataloader(self, seed: int) -> tuple[DataLoader, Sampler]:
        dl = self.train_dataloader
        sampler = dl.sampler
        if isinstance(sampler, (RandomSampler, SequentialSampler)) and not getattr(sampler, "replacement", False):
            sampler = EpochSampler(len(dl.dataset), shuffle=isinstance(sampler, RandomSampler), seed=seed)
        rebuilt = DataLoader(
            dl.dataset,
            batch_size=dl.batch_size,
            sampler=sampler,
            num_workers=dl.num_workers,
            collate_fn=dl.collate_fn,
            pin_memory=dl.pin_memory,
            drop_last=dl.drop_last,
            worker_init_fn=dl.worker_init_fn,
            generator=torch.Generator().manual_seed(seed),
        )
        return rebuilt, sampler

    def _build_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=cfg.learning_rate, momentum=cfg.sgd_momentum, weight_decay=cfg.adam_weight_decay
            )
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(
            params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )

    def _select(self) -> dict[str, torch.nn.Parameter]:
        chosen = select_parameters(self.model, self.trainable, what="trainable parameters")
        self._saved_requires_grad = {n: p.requires_grad for n, p in self.model.named_parameters()}
        chosen_ids = {id(p) for p in chosen.values()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in chosen_ids)
            # never train in half-precision weights: trainable parameters are kept in fp32
            if id(p) in chosen_ids and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
        return chosen

    def _restore_requires_grad(self) -> None:
        saved = getattr(self, "_saved_requires_grad", None)
        if saved:
            for n, p in self.model.named_parameters():
                p.requires_grad_(saved.get(n, p.requires_grad))

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, accelerator, epoch_state: dict[str, int]) -> None:
        cfg = self.config
        out = Path(cfg.output_dir)
        final = out / f"checkpoint-{self.global_step}"
        tmp = out / f".checkpoint-{self.global_step}.tmp"
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            self._prune_checkpoints(out)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            self._save_extra_state(tmp)
            state = {"global_step": self.global_step, **epoch_state, "config": config_to_dict(cfg)}
            (tmp / _STATE_FILE).write_text(strict_json(state, _STATE_FILE, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        accelerator.wait_for_everyone()

    def _prune_checkpoints(self, out: Path) -> None:
        limit = self.config.checkpoints_total_limit
        if limit is None:
            return
        found = sorted(
            (int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
        )
        for _, path in found[: max(0, len(found) - limit + 1)]:
            shutil.rmtree(path)

    def _save_extra_state(self, directory: Path) -> None:

        for name, obj in self.extra_state.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in obj.state_dict().items()}
            save_tensors(tensors, str(directory / f"extra_{name}.safetensors"))

    def _load_checkpoint(self, accelerator, path: Path) -> dict[str, Any]:

        state = read_trainer_state(path)
        try:
            accelerator.load_state(str(path))
            for name, obj in self.extra_state.items():
                obj.load_state_dict(load_file(str(path / f"extra_{name}.safetensors")))
        except Exception as exc:  # safetensors, torch and accelerate raise assorted types for a damaged file
            raise CheckpointError(f"checkpoint {path} is corrupt: {str(exc).splitlines()[0][:200]}") from None
        return state

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Run the loop to ``max_train_steps`` optimizer steps (resuming first if asked); return a summary."""

        cfg = self.config
        seed = cfg.seed if cfg.seed is not None else 0
        if cfg.seed is not None:
            set_seed(cfg.seed)
        accelerator = self.accelerator = self._make_accelerator()
        chosen = self._select()
        try:
            dataloader, sampler = self._rebuild_dataloader(seed)
            optimizer = self._build_optimizer(list(chosen.values()))
            n = accelerator.num_processes
            scheduler = get_scheduler(
                cfg.lr_scheduler,
                optimizer=optimizer,
                num_warmup_steps=cfg.lr_warmup_steps * n,
                num_training_steps=cfg.max_train_steps * n,
            )
            model, optimizer, dataloader, scheduler = accelerator.prepare(self.model, optimizer, dataloader, scheduler)
            with _checkpointing(self.model, cfg.gradient_checkpointing):
                return self._loop(accelerator, model, optimizer, dataloader, scheduler, sampler, sorted(chosen))
        finally:
            self._restore_requires_grad()
            if accelerator.trackers:
                accelerator.end_training()

    def _resume(self, accelerator) -> tuple[int, str | None]:
        """Load the checkpoint named by ``resume_from_checkpoint``; return micro-batches already consumed."""
        cfg = self.config
        if not cfg.resume_from_checkpoint:
            return 0, None
        path = find_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint)
        if path is None:
            accelerator.print(f"no checkpoint found in {cfg.output_dir}; starting a new training run")
            return 0, None
        state = self._load_checkpoint(accelerator, path)
        self.global_step = int(state["global_step"])
        return int(state["micro_batches"]), str(path)

    def _optimizer_step(self, accelerator, optimizer, trainable: list[torch.nn.Parameter], plain: bool) -> None:
        """Clip and step. In a plain run, step the wrapped optimizer directly: the Accelerate wrapper adds a package
        look-up per call that costs ~10% on small models (see scripts/bench_trainer.py)."""
        if self.config.max_grad_norm:
            if plain:
                torch.nn.utils.clip_grad_norm_(trainable, self.config.max_grad_norm)
            else:
                accelerator.clip_grad_norm_(trainable, self.config.max_grad_norm)
        if plain:
            optimizer.optimizer.step()
        else:
            optimizer.step()

    def _loop(self, accelerator, model, optimizer, dataloader, scheduler, sampler, trained_names) -> TrainResult:
        cfg = self.config
        run = _LoopState(
            accelerator=accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            trainable=[p for group in optimizer.param_groups for p in group["params"]],
            plain=_is_plain(accelerator),
            autocast=accelerator.autocast if cfg.mixed_precision != "no" else contextlib.nullcontext,
            # a constant schedule without warm-up never changes the rate: skip its per-step bookkeeping
            schedule_moves=not (cfg.lr_scheduler == "constant" and cfg.lr_warmup_steps == 0),
            step_loss=torch.zeros((), device=accelerator.device),
        )
        self.global_step = 0
        consumed, resumed_from = self._resume(accelerator)
        if cfg.report_to and accelerator.is_main_process:
            accelerator.init_trackers(cfg.tracker_project_name, config=_flat_config(cfg))
        run.bar = tqdm(
            total=cfg.max_train_steps,
            initial=self.global_step,
            desc=self.progress_desc,
            disable=not (cfg.show_progress and accelerator.is_local_main_process),
        )
        start = time.perf_counter()
        if self.global_step < cfg.max_train_steps:
            for micro_batches, batch in _batches(accelerator, dataloader, sampler, consumed):
                if self._micro_step(run, batch):
                    self._after_update(run, micro_batches)
                    if self.global_step >= cfg.max_train_steps:
                        break
        run.bar.close()
        accelerator.wait_for_everyone()
        self.model = accelerator.unwrap_model(model)
        per_update = cfg.gradient_accumulation_steps * (self.train_dataloader.batch_size or 1)
        return TrainResult(
            global_step=self.global_step,
            losses=run.losses,
            seconds=time.perf_counter() - start,
            trained_parameters=trained_names,
            resumed_from=resumed_from,
            samples_seen=len(run.losses) * per_update * accelerator.num_processes,
            extra={
                "updates_per_epoch": math.ceil(len(dataloader) / cfg.gradient_accumulation_steps),
                "num_processes": accelerator.num_processes,
            },
        )

    def _micro_step(self, run: _LoopState, batch: Any) -> bool:
        """Forward and backward one micro-batch; step the optimizer at the end of an accumulation cycle.
        Returns whether an optimizer step happened."""
        accelerator, accum = run.accelerator, self.config.gradient_accumulation_steps
        with accelerator.accumulate(run.model):
            with run.autocast():
                loss = self.compute_loss(run.model, batch)
            if run.plain:  # what Accelerate's backward does here, minus a division by 1 in the graph
                (loss / accum if accum > 1 else loss).backward()
            else:
                accelerator.backward(loss)
            run.step_loss += loss.detach()
            if not accelerator.sync_gradients:
                return False
            self._optimizer_step(accelerator, run.optimizer, run.trainable, run.plain)
            if run.schedule_moves:
                run.scheduler.step()
            # the wrapper's zero_grad inspects the optimizer's signature on every call
            (run.optimizer.optimizer if run.plain else run.optimizer).zero_grad(set_to_none=True)
        return True

    def _after_update(self, run: _LoopState, micro_batches: int) -> None:
        """Bookkeeping after an optimizer step: loss, hook, progress bar, trackers, checkpoint."""
        cfg, accelerator = self.config, run.accelerator
        self.global_step += 1
        loss = accelerator.reduce(run.step_loss, "mean") if accelerator.num_processes > 1 else run.step_loss
        self.last_loss = float(loss) / cfg.gradient_accumulation_steps
        run.losses.append(self.last_loss)
        run.step_loss.zero_()
        if self.after_step is not None:
            self.after_step(self)
        run.bar.update(1)
        if self.global_step % 10 == 0 or self.global_step == cfg.max_train_steps:
            run.bar.set_postfix(loss=f"{self.last_loss:.4f}", refresh=False)
        if cfg.report_to:
            accelerator.log({"loss": self.last_loss, "lr": run.scheduler.get_last_lr()[0]}, step=self.global_step)
        if cfg.checkpointing_steps and cfg.output_dir and self.global_step % cfg.checkpointing_steps == 0:
            self._save_checkpoint(accelerator, {"micro_batches": micro_batches})


@dataclass
class _LoopState:
    """What one call of :meth:`Trainer.train` carries from step to step."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    trainable: list[torch.nn.Parameter]
    plain: bool
    autocast: Callable[[], Any]
    schedule_moves: bool
    step_loss: torch.Tensor
    losses: list[float] = field(default_factory=list)
    bar: Any = None


def _batches(accelerator, dataloader, sampler, consumed: int) -> Iterator[tuple[int, Any]]:
    """Endless ``(micro-batches consumed including this one, batch)`` pairs, epoch after epoch, starting after the
    ``consumed`` micro-batches a resumed run has already seen."""
    per_epoch = len(dataloader)
    epoch, skip = divmod(consumed, per_epoch)
    while True:
        batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        # the prepared loader re-sets its sampler's epoch from its own iteration counter on every __iter__,
        # so the epoch is set on the loader (and on our sampler, which it may not reach after skipping)
        batches.set_epoch(epoch)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for micro, batch in enumerate(batches, start=skip):
            yield epoch * per_epoch + micro + 1, batch
        epoch, skip = epoch + 1, 0


def _is_plain(accelerator) -> bool:
    """No grad scaler and no sharding engine (DeepSpeed, FSDP, XLA, Megatron): single process or DDP, where
    Accelerate's backward and optimizer step reduce to the plain PyTorch calls."""

    plain_types = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    return accelerator.scaler is None and accelerator.distributed_type in plain_types


def _flat_config(cfg: TrainerConfig) -> dict[str, Any]:
    """Trackers accept scalars only."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _check_trackers(report_to: str | None) -> None:
    """Fail early with the accepted names, or with the package to install, instead of logging nowhere."""
    if report_to is None or report_to == "all":
        return

    known = [t.value for t in LoggerType if t.value != "all"]
    if report_to not in known:
        raise ConfigError(f"report_to: invalid value {report_to!r}; accepted values: none, all, {', '.join(known)}")
    if report_to not in [t.value for t in get_available_trackers()]:
        raise ConfigError(f"report_to={report_to!r} needs the {report_to} package: pip install {report_to}")
