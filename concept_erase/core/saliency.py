"""SalUn weight saliency: which weights matter for the data to forget, and a mask that lets only those change.

    scores = compute_saliency(model, forget_loader, loss_fn)        # |sum over the forget set of grad loss|
    mask = SaliencyMask.from_scores(scores, ratio=0.5)              # keep the top half (SalUn's default)
    mask.save("mask.safetensors")                                   # bit-packed: about numel / 8 bytes
    applier = mask.applier(model)
    Trainer(model, cfg, loader, loss, after_step=applier, extra_state={"saliency": applier}).train()

Masking gradients alone does not freeze weights: momentum and decoupled weight decay keep moving them. The
:class:`MaskApplier` therefore restores the masked-out entries after every optimizer step, so they stay bit-identical.

Thresholds are found without sorting: an exact k-th-largest search by radix select on the float32 bit patterns
(non-negative floats order like their int32 bits), using ``torch.bincount`` histograms of 11-bit digits over
fixed-size chunks, so the extra memory is one chunk's worth whatever the model size.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global backend state
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from concept_erase.core.errors import ConfigError, EmptyDataError, MaskError
from concept_erase.core.io import atomic_file, strict_json
from concept_erase.core.parameters import Selection, select_parameters, unwrap_model
from concept_erase.core.tensorfile import save_tensors

__all__ = ["compute_saliency", "select_parameters", "kth_largest", "num_kept", "SaliencyMask", "MaskApplier", "MODES"]

MODES = ("global", "per_layer", "absolute")

_FORMAT = "concept-erase/saliency-mask"
_FORMAT_VERSION = "1"
_CHUNK = 1 << 22  # elements per chunk of the radix select (16 MiB of float32)
_DIGITS = ((21, 11), (10, 11), (0, 10))  # (shift, width): the 31 value bits of a non-negative float32, high first
_VALUE_BITS = 0x7FFFFFFF  # clears the sign bit, so -0.0 counts as 0.0


# ---------------------------------------------------------------------------------------------------- selection


# ---------------------------------------------------------------------------------------------------- saliency


def compute_saliency(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    params: Selection = None,
    accelerator: Any = None,
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """SalUn saliency ``|sum over all batches of d loss_fn(model, batch) / d w|`` of the selected parameters.

    Gradients are accumulated in one pass (eval mode, plain ``loss.backward()``: no loss scaling or division), summed
    across processes when ``torch.distributed`` is initialised (or ``accelerator.num_processes > 1``), then taken
    ``abs`` in place in the ``.grad`` storage they were accumulated in, so the scores are the only extra copy. The
    model is left as found: weights, ``requires_grad`` flags, train/eval modes and existing ``.grad`` tensors.
    Returns float32 tensors keyed by parameter name (names of the module under any DDP wrapper).
    """
    selected = select_parameters(model, params)
    chosen = {id(p) for p in selected.values()}
    all_params = [p for _, p in unwrap_model(model).named_parameters()]
    saved = [(p, p.requires_grad, p.grad) for p in all_params]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p in all_params:
            p.grad = None
            p.requires_grad_(id(p) in chosen)
        model.eval()
        batches = _accumulate_gradients(model, dataloader, loss_fn, _is_main_process(accelerator), show_progress)
        return _take_scores(selected, batches, accelerator)
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for module, training in modes:
            module.training = training


def _accumulate_gradients(model, dataloader, loss_fn, is_main: bool, show_progress: bool) -> int:

    try:
        total = len(dataloader)
    except TypeError:
        total = None
    # a DDP-wrapped model would average gradients on every backward; we sum once at the end instead
    no_sync = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()
    batches = 0
    with no_sync:
        for batch in tqdm(dataloader, total=total, desc="saliency", disable=not (show_progress and is_main)):
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ConfigError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
            if not loss.requires_grad:
                raise ConfigError("the loss does not depend on any selected parameter (is loss_fn under no_grad?)")
            loss.reshape(()).backward()
            batches += 1
    return batches


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _world_size(accelerator) -> int:
    if _distributed():
        return torch.distributed.get_world_size()
    return int(getattr(accelerator, "num_processes", 1)) if accelerator is not None else 1


def _is_main_process(accelerator) -> bool:
    if accelerator is not None:
        return bool(accelerator.is_local_main_process)
    return not _distributed() or torch.distributed.get_rank() == 0


def _sum_across_processes(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    if _distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)  # in place
        return tensor
    return accelerator.reduce(tensor, reduction="sum")


def _take_scores(selected: dict[str, nn.Parameter], batches: int, accelerator) -> dict[str, torch.Tensor]:
    """Move each accumulated ``.grad`` out of its parameter, reduce it across processes and take ``abs`` in place."""
    distributed = _world_size(accelerator) > 1
    if distributed:  # every rank takes part in the reductions, even one that saw no batch
        device = next(iter(selected.values())).device
        batches = int(_sum_across_processes(torch.tensor([batches], device=device), accelerator).item())
    if batches == 0:
        raise EmptyDataError("the saliency data loader is empty: there is no data to compute gradients on")
    scores = {}
    for name, param in selected.items():
        grad, param.grad = param.grad, None
        if grad is None:  # the loss does not reach this parameter: zero saliency
            grad = torch.zeros_like(param, dtype=torch.float32)
        elif grad.is_sparse:
            grad = grad.to_dense()
        if grad.dtype != torch.float32:
            grad = grad.float()
        if distributed:
            grad = _sum_across_processes(grad, accelerator)
        scores[name] = grad.detach().abs_()
    return scores


# ---------------------------------------------------------------------------------------------------- radix select


def num_kept(numel: int, ratio: float) -> int:
    """How many of ``numel`` scores a ``ratio`` keeps: ``round(ratio * numel)``, at least one (0 for no elements)."""
    return 0 if numel == 0 else min(numel, max(1, round(ratio * numel)))


def _bit_chunks(tensors: Sequence[torch.Tensor], chunk_size: int) -> Iterator[torch.Tensor]:
    """The int32 bit patterns of the tensors' values, ``chunk_size`` elements at a time."""
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        if flat.dtype != torch.float32:
            flat = flat.float()
        for start in range(0, flat.numel(), chunk_size):
            yield flat[start : start + chunk_size].view(torch.int32) & _VALUE_BITS


def _pick_digit(hist: torch.Tensor, remaining: int) -> tuple[int, int]:
    """The digit holding the ``remaining``-th largest value, and its rank among the values with that digit."""
    at_least = hist.flip(0).cumsum(0).tolist()  # at_least[j]: how many values have digit >= size - 1 - j
    j = bisect.bisect_left(at_least, remaining)
    digit = hist.numel() - 1 - j
    return digit, remaining - (at_least[j] - int(hist[digit]))


def kth_largest(tensors: Sequence[torch.Tensor], k: int, chunk_size: int = _CHUNK) -> float:
    """Exact ``k``-th largest (1-based) of the non-negative values in ``tensors``, by radix select.

    Three passes of ``torch.bincount`` over 11-bit digits of the float32 bit patterns, chunk by chunk. Once the
    values still in the running fit in one chunk they are gathered and the last passes run on them alone. The peak
    extra memory is a few chunk-sized temporaries, never a sorted copy of all values.
    """
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    prefix, remaining, candidates = 0, k, total
    gathered: list[torch.Tensor] = []  # the bit patterns still in the running, once they fit in one chunk
    for index, (shift, width) in enumerate(_DIGITS):
        high = shift + width  # values still in the running have bits >> high == prefix
        if index and not gathered and candidates <= chunk_size:
            gathered = [torch.cat([bits[(bits >> high) == prefix] for bits in _bit_chunks(tensors, chunk_size)])]
        hist = torch.zeros(1 << width, dtype=torch.int64)
        for bits in gathered or _bit_chunks(tensors, chunk_size):
            if index:
                bits = bits[(bits >> high) == prefix]
            hist += torch.bincount((bits >> shift) & ((1 << width) - 1), minlength=1 << width).cpu()
        digit, remaining = _pick_digit(hist, remaining)
        prefix, candidates = (prefix << width) | digit, int(hist[digit])
    return torch.tensor([prefix], dtype=torch.int32).view(torch.float32).item()


def _check_scores(scores: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(scores, Mapping) or not scores:
        raise MaskError("scores must be a non-empty mapping of parameter name -> tensor")
    for name, score in scores.items():
        if not isinstance(score, torch.Tensor) or not score.is_floating_point():
            raise MaskError(f"score of {name!r} must be a floating-point tensor, got {type(score).__name__}")
        if score.numel() and not bool((score >= 0).all()):
            raise MaskError(f"scores of {name!r} contain negative or NaN values; saliency scores must be >= 0")


def _check_options(mode: str, ratio: float | None, threshold: float | None) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode: invalid value {mode!r}; accepted values: {', '.join(map(repr, MODES))}")
    if mode == "absolute":
        if threshold is None or not math.isfinite(threshold) or threshold < 0:
            raise ConfigError(f"mode 'absolute' needs a finite threshold >= 0, got {threshold!r}")
        if ratio is None:
            return
    elif threshold is not None:
        raise ConfigError(f"threshold is only used with mode 'absolute' (mode is {mode!r}); use ratio instead")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ConfigError(f"ratio must be in (0, 1] (the fraction of weights kept), got {ratio!r}")


def _at_least(score: torch.Tensor, threshold: float, positive_only: bool = False) -> torch.Tensor:
    """``score >= threshold``; with ``positive_only`` a zero threshold keeps only positive scores (a weight whose
    saliency is exactly 0 does not affect the loss: keeping every zero would keep the whole model)."""
    score = score if score.dtype == torch.float32 else score.float()
    return score > 0 if positive_only and threshold <= 0 else score >= threshold


# ---------------------------------------------------------------------------------------------------- the mask


class SaliencyMask:
    """Boolean masks keyed by parameter name: ``True`` = salient = may be updated; ``False`` = frozen.

    Build with :meth:`from_scores` (or :meth:`random_like`, :meth:`load`); apply with :meth:`applier`.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], metadata: dict | None = None):
        if not masks:
            raise MaskError("a saliency mask needs at least one parameter")
        self.masks = {name: m if m.dtype == torch.bool else m.bool() for name, m in masks.items()}
        self.metadata = dict(metadata or {})

    @classmethod
    def from_scores(
        cls,
        scores: Mapping[str, torch.Tensor],
        ratio: float | None = 0.5,
        mode: str = "global",
        threshold: float | None = None,
        loss_name: str | None = None,
        metadata: dict | None = None,
        chunk_size: int = _CHUNK,
    ) -> SaliencyMask:
        """Keep the top ``ratio`` of all scores (``"global"``, SalUn), of each tensor (``"per_layer"``), or the
        scores ``>= threshold`` (``"absolute"``). Ties with the k-th largest score are all kept, except zeros: when the
        k-th largest score is 0 (more than ``1 - ratio`` of the scores are exactly 0, e.g. ReLU units the forget set
        never activates), only the positive scores are kept, so fewer than ``ratio`` of the weights may change."""
        _check_options(mode, ratio, threshold)
        _check_scores(scores)
        meta: dict[str, Any] = {"mode": mode, "ratio": ratio, "threshold": threshold, "loss_name": loss_name}
        if mode == "global":
            tensors = list(scores.values())
            k = num_kept(sum(t.numel() for t in tensors), ratio)
            threshold = kth_largest(tensors, k, chunk_size) if k else 0.0
            masks = {name: _at_least(s, threshold, ratio < 1) for name, s in scores.items()}
            meta.update(threshold=threshold, k=k)
        elif mode == "per_layer":
            masks, thresholds = {}, {}
            for name, s in scores.items():
                k = num_kept(s.numel(), ratio)
                thresholds[name] = kth_largest([s], k, chunk_size) if k else 0.0
                masks[name] = _at_least(s, thresholds[name], ratio < 1)
            meta["thresholds"] = thresholds
        else:
            masks = {name: _at_least(s, threshold) for name, s in scores.items()}
        meta["seed"] = None
        return cls(masks, {**meta, **(metadata or {})})

    @classmethod
    def random_like(cls, other: SaliencyMask, seed: int = 0) -> SaliencyMask:
        """SalUn's ablation: as many kept entries per tensor as ``other``, at random positions (seeded)."""
        generator = torch.Generator().manual_seed(seed)
        masks = {}
        for name, mask in other.masks.items():
            flat = torch.zeros(mask.numel(), dtype=torch.bool)
            flat[torch.randperm(mask.numel(), generator=generator)[: int(mask.sum())]] = True
            masks[name] = flat.view(mask.shape).to(mask.device)
        meta = {**other.metadata, "mode": "random", "source_mode": other.metadata.get("mode"), "seed": seed}
        return cls(masks, meta)

    # ------------------------------------------------------------------ statistics
    def __len__(self) -> int:
        return len(self.masks)

    def __repr__(self) -> str:
        return f"SaliencyMask({len(self)} tensors, fraction_kept={self.fraction_kept:.4f}, mode={self.metadata.get('mode')!r})"

    @property
    def fraction_kept(self) -> float:
        stats = self.summary()
        return stats["fraction_kept"]

    def summary(self) -> dict:
        """Kept counts overall and per tensor."""
        per_layer, total, kept = {}, 0, 0
        for name, mask in self.masks.items():
            n, k = mask.numel(), int(mask.sum())
            per_layer[name] = {"numel": n, "kept": k, "fraction_kept": k / n if n else 0.0}
            total, kept = total + n, kept + k
        return {"total": total, "kept": kept, "fraction_kept": kept / total if total else 0.0, "per_layer": per_layer}

    def plot_summary(self, path: str | Path) -> Path:
        """Horizontal bar chart (PNG) of the fraction kept per tensor."""
        stats = self.summary()
        names = list(stats["per_layer"])
        fig = Figure(figsize=(8, min(max(2.5, 0.16 * len(names) + 1.2), 120)))
        ax = fig.subplots()
        ax.barh(range(len(names)), [stats["per_layer"][n]["fraction_kept"] for n in names], color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of weights kept (salient)")
        ax.set_title(f"saliency mask: {stats['kept']:,} of {stats['total']:,} kept ({stats['fraction_kept']:.1%})")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=90)
        return path

    # ------------------------------------------------------------------ checking against a model
    def validate(self, model: nn.Module) -> SaliencyMask:
        """Raise :class:`MaskError` naming the first mask tensor missing from ``model`` or of another shape."""
        params = dict(unwrap_model(model).named_parameters())
        for name, mask in self.masks.items():
            param = params.get(name)
            if param is None:
                sample = ", ".join(list(params)[:3])
                raise MaskError(
                    f"mask parameter {name!r} (mask shape {tuple(mask.shape)}) is not in the model; "
                    f"model parameters look like: {sample}"
                )
            if param.shape != mask.shape:
                raise MaskError(
                    f"mask for {name!r} has shape {tuple(mask.shape)} but the model parameter has shape "
                    f"{tuple(param.shape)}"
                )
        return self

    def applier(self, model: nn.Module) -> MaskApplier:
        return MaskApplier(self, model)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write a bit-packed safetensors file (one uint8 tensor per parameter) atomically."""

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, params = {}, []
        for name, mask in self.masks.items():
            tensors[name] = _pack(mask)
            params.append({"name": name, "shape": list(mask.shape), "kept": int(mask.sum())})
        info = strict_json({"metadata": self.metadata, "parameters": params}, "the mask's metadata")
        header = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "mask": info}
        with atomic_file(path) as tmp:
            save_tensors(tensors, str(tmp), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> SaliencyMask:
        """Read a file written by :meth:`save`; with ``model`` also :meth:`validate` it. Damage -> :class:`MaskError`."""
        path = Path(path)
        if not path.is_file():
            raise MaskError(f"saliency mask file not found: {path}")
        try:
            masks, metadata = _read_mask_file(path)
        except MaskError:
            raise
        except Exception as exc:  # safetensors, json and numpy raise assorted types for a damaged file
            raise MaskError(f"saliency mask file {path} is corrupt: {str(exc).splitlines()[0][:200]}") from None
        mask = cls(masks, metadata)
        return mask.validate(model) if model is not None else mask


def _pack(mask: torch.Tensor) -> torch.Tensor:
    bits = mask.detach().reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(bits, bitorder="little"))


def _unpack(packed: torch.Tensor, shape: list[int], kept: int, name: str) -> torch.Tensor:
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.shape != ((numel + 7) // 8,):
        raise MaskError(
            f"packed mask of {name!r} has {packed.numel()} bytes; shape {tuple(shape)} needs {(numel + 7) // 8}"
        )
    bits = np.unpackbits(packed.numpy(), count=numel, bitorder="little").view(np.bool_)
    mask = torch.from_numpy(bits).reshape(shape)
    if int(mask.sum()) != kept:
        raise MaskError(f"mask of {name!r} keeps {int(mask.sum())} weights but its header records {kept}: corrupt")
    return mask


def _read_mask_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        if header.get("format") != _FORMAT:
            raise MaskError(f"{path} is not a saliency mask file (no {_FORMAT!r} format tag)")
        info = _mask_header(path, header)
        stored = set(handle.keys())
        masks = {}
        for p in info["parameters"]:
            if p["name"] not in stored:
                raise MaskError(f"saliency mask file {path} is corrupt: no tensor for parameter {p['name']!r}")
            masks[p["name"]] = _unpack(handle.get_tensor(p["name"]), p["shape"], p["kept"], p["name"])
    return masks, info["metadata"]


def _mask_header(path: Path, header: dict) -> dict:
    """The ``mask`` header entry, checked field by field (a damaged one raises :class:`MaskError` naming the file)."""

    def corrupt(what: str) -> MaskError:
        return MaskError(f"saliency mask file {path} is corrupt: {what}")

    if "mask" not in header:
        raise corrupt("the header has no 'mask' entry")
    try:
        info = json.loads(header["mask"])
    except json.JSONDecodeError as exc:
        raise corrupt(f"the 'mask' header entry is not valid JSON ({exc.msg})") from None
    if not isinstance(info, dict):
        raise corrupt(f"the 'mask' header entry must be a JSON object, got {type(info).__name__}")
    for key, kind in (("metadata", dict), ("parameters", list)):
        if not isinstance(info.get(key), kind):
            raise corrupt(
                f"the 'mask' header entry's {key!r} is missing or not a {'list' if kind is list else 'mapping'}"
            )
    for i, p in enumerate(info["parameters"]):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise corrupt(f"parameters[{i}] must be a mapping with a 'name' string")
        shape, kept = p.get("shape"), p.get("kept")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise corrupt(
                f"parameters[{i}] ({p['name']!r}): 'shape' must be a list of non-negative integers, got {shape!r}"
            )
        if isinstance(kept, bool) or not isinstance(kept, int) or not 0 <= kept <= math.prod(shape):
            raise corrupt(
                f"parameters[{i}] ({p['name']!r}): 'kept' must be an integer in [0, {math.prod(shape)}], got {kept!r}"
            )
    return info


# ---------------------------------------------------------------------------------------------------- applying it


@dataclass(eq=False)
class _Frozen:
    name: str
    param: nn.Parameter
    where: torch.Tensor  # bool, True = frozen (not salient)
    values: torch.Tensor  # the frozen entries' original values, in row-major order


class MaskApplier:
    """Keeps the non-salient entries of the model's parameters bit-identical through training.

    Call it (it is an ``after_step(trainer)`` hook) after every optimizer step: it writes the frozen entries' original
    values back in place, undoing whatever momentum and weight decay did to them. Only the frozen entries are stored.
    :meth:`mask_gradients` / :meth:`register_grad_hooks` also zero their gradients (so clipping sees salient ones only).
    """

    def __init__(self, mask: SaliencyMask, model: nn.Module):
        mask.validate(model)
        params = dict(unwrap_model(model).named_parameters())
        self._entries: list[_Frozen] = []
        self._hooks: list[Any] = []
        self.num_total = self.num_frozen = 0
        for name, keep in mask.masks.items():
            param = params[name]
            where = ~keep.to(param.device)
            self._entries.append(_Frozen(name, param, where, param.detach()[where]))
            self.num_total += keep.numel()
            self.num_frozen += self._entries[-1].values.numel()

    @property
    def frozen_fraction(self) -> float:
        return self.num_frozen / self.num_total if self.num_total else 0.0

    def _placed(self, entry: _Frozen) -> _Frozen:
        """Follow the parameter if it moved device or changed dtype since construction."""
        param = entry.param
        if entry.where.device != param.device:
            entry.where = entry.where.to(param.device)
        if entry.values.device != param.device or entry.values.dtype != param.dtype:
            entry.values = entry.values.to(device=param.device, dtype=param.dtype)
        return entry

    @torch.no_grad()
    def restore(self) -> None:
        """Write the frozen entries' original values back into the parameters, in place."""
        for entry in map(self._placed, self._entries):
            if entry.values.numel():
                entry.param.masked_scatter_(entry.where, entry.values)

    def __call__(self, trainer: Any = None) -> None:
        self.restore()

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of the frozen entries (call between ``backward`` and clipping/``step``)."""
        for entry in map(self._placed, self._entries):
            if entry.param.grad is not None:
                entry.param.grad.masked_fill_(entry.where.to(entry.param.grad.device), 0)

    def register_grad_hooks(self) -> list:
        """Zero frozen entries' gradients as they are computed; returns the hook handles (see :meth:`remove_grad_hooks`)."""
        for entry in self._entries:
            if entry.param.requires_grad:
                where = entry.where
                self._hooks.append(
                    entry.param.register_hook(lambda grad, where=where: grad.masked_fill(where.to(grad.device), 0))
                )
        return list(self._hooks)

    def remove_grad_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def is_intact(self) -> bool:
        """Whether every frozen entry currently equals its original value bit for bit."""
        return all(torch.equal(e.param.detach()[e.where], e.values) for e in map(self._placed, self._entries))

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen values and bit-packed frozen positions, as CPU tensors (safetensors-ready)."""
        state = {}
        for entry in self._entries:
            state[f"values.{entry.name}"] = entry.values.detach().cpu()
            state[f"frozen.{entry.name}"] = _pack(entry.where)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for entry in self._entries:
            values, frozen = state.get(f"values.{entry.name}"), state.get(f"frozen.{entry.name}")
            if values is None or frozen is None:
                raise MaskError(f"mask applier state has no entry for {entry.name!r}")
            if not torch.equal(frozen.cpu(), _pack(entry.where)) or values.numel() != entry.values.numel():
                raise MaskError(f"mask applier state for {entry.name!r} was saved with a different mask")
            entry.values = values.to(device=entry.param.device, dtype=entry.param.dtype).reshape(-1)
