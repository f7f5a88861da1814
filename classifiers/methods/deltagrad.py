"""DeltaGrad: replay a cached gradient-descent trajectory without (or with extra) examples.

Wu, Dobriban and Davidson, "DeltaGrad: Rapid retraining of machine learning models" (ICML 2020). The model is
trained by full-batch gradient descent on the L2-regularised cross-entropy

    F(w) = mean_i loss(x_i, y_i; w) + l2 / 2 * ||w||^2,     w_{t+1} = w_t - lr * grad F(w_t),

and the parameters ``w_t`` and the data gradients ``g_t`` of every iteration are cached
(:func:`train_with_cache`). To delete the rows ``R`` (or add new examples ``A``) the trajectory is replayed from the
same initial weights: at the first ``burn_in`` (``j0``) iterations and every ``exact_every`` (``T0``) iterations
after them the gradient on the new data set is computed exactly, and the pair ``(w'_t - w_t, g(w'_t) - g_t)`` joins
an L-BFGS history of the last ``history`` (``m``) pairs; at the other iterations the full-data gradient at ``w'_t``
is approximated by ``g_t + B (w'_t - w_t)`` (``B`` the compact L-BFGS quasi-Hessian of the history), and only the
gradients of the deleted / added examples are computed exactly. Defaults: the paper's (``T0 = 5``, ``j0 = 10``,
``m = 2``) and the authors' MNIST learning rate 0.1. Each replay returns the new trajectory as a new cache, so
requests can follow one another (online).

Against the authors' code (github.com/wuyinjun-1993/DeltaGrad, ``src/main_delete.py``): the same pairs (every exact
iteration, burn-in included, ``w'_t - w_t`` against the full-data gradient difference), the same schedule, the same
compact L-BFGS matrix (prepared once per history); we run full-batch GD (they run mini-batch SGD), approximate the
data term's Hessian and add the L2 gradient exactly (they put ``l2 * s`` into ``y`` and floor ``sigma`` at 1e-3:
measured no difference), skip pairs with ``s.y <= 0``, and skip pairs with ``lr * (|y|^2 / s.y + l2) >= 2``
(``B s = y`` then gives ``B`` an eigenvalue past GD's stability limit and the approximate iterations blow up; it
happens on an MLP, never on a convex model at a stable learning rate). docs/deltagrad.md has the measurements.

Models: the ``mlp`` family only: ``hidden_sizes: []`` is softmax regression (the paper's convex case, where the
replay stays close to retraining) and a small MLP (non-convex: pairs with ``s.y <= 0`` or past the stability limit
are skipped; measured 2.3-6.4x closer to retraining than the original on MNIST-5k, not the 154-274x of softmax
regression). Other families are refused. The cache is a safetensors file (``w_t`` and ``g_t`` per iteration,
float64: ``2 x iterations x parameters x 8`` bytes) with a fingerprint of the training data and of the model's
parameters; a cache of another run is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.func import functional_call

from classifiers.data import UnlearningTask
from classifiers.models import MLP
from classifiers.training import reinitialise
from concept_erase.core.config import check_numbers
from concept_erase.core.errors import ConfigError, InputNotFoundError, TrainingError
from concept_erase.core.readers import first_line
from concept_erase.core.registry import register_method
from concept_erase.core.tensorfile import save_tensors

__all__ = [
    "CACHE_FORMAT",
    "DeltaGradCache",
    "DeltaGradConfig",
    "GDRecipe",
    "check_model",
    "data_fingerprint",
    "deltagrad",
    "load_cache",
    "replay",
    "retrain_gd",
    "save_cache",
    "train_with_cache",
]

CACHE_FORMAT = "concept-erase/deltagrad-cache/1"


@dataclass
class GDRecipe:
    """Full-batch gradient descent on the L2-regularised cross-entropy (float64).

    ``learning_rate`` 0.1 is the authors' MNIST value (their code: SGD at 0.1, about 100 iterations). DeltaGrad's
    approximation needs a step well inside GD's stability limit ``2 / lambda_max``: on MNIST-5k softmax regression
    ``lambda_max`` of the Hessian is 4.5 at the initial weights (limit 0.45), and at learning rate 0.5 the replay was
    only 6x closer to retraining than the original model (166x at 0.1); see docs/deltagrad.md."""

    iterations: int = 100
    learning_rate: float = 0.1
    l2: float = 1e-3

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")


@dataclass
class DeltaGradConfig(GDRecipe):
    """``exact_every`` (the paper's ``T0``), ``burn_in`` (``j0``), ``history`` (``m``); the GD recipe of the cache
    (used when the cache is re-created); ``cache_path``: a cache written by :func:`save_cache`; without one the
    recipe is re-run from weights initialised with ``seed`` (reported as ``excluded_seconds``) unless
    ``require_cache``."""

    exact_every: int = 5
    burn_in: int = 10
    history: int = 2
    cache_path: str | None = None
    require_cache: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.exact_every < 1:
            raise ConfigError(f"exact_every (T0) must be >= 1, got {self.exact_every}")
        if self.burn_in < 0:
            raise ConfigError(f"burn_in (j0) must be >= 0, got {self.burn_in}")
        if self.history < 1:
            raise ConfigError(f"history (m) must be >= 1, got {self.history}")
        if self.cache_path == "":
            self.cache_path = None


@dataclass
class DeltaGradCache:
    """``params`` (T, p) and ``grads`` (T, p): ``w_t`` and the data gradient (mean over the training set, without
    the L2 term) at ``w_t`` for t = 0..T-1; ``final`` (p,) = ``w_T``."""

    params: torch.Tensor
    grads: torch.Tensor
    final: torch.Tensor
    recipe: GDRecipe
    num_samples: int
    fingerprint: str

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.params, self.grads, self.final))


def check_model(model: nn.Module) -> None:
    """DeltaGrad handles the ``mlp`` family; other models raise ConfigError naming it."""
    if not isinstance(model, MLP):
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise ConfigError(
            f"deltagrad handles softmax regression and small MLPs only: model 'mlp' (hidden_sizes [] for softmax "
            f"regression, or a few dense hidden layers), got {name!r}"
        )


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def _write(model: nn.Module, w: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in model.parameters():
            p.copy_(w[offset : offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()


class _Gradient:
    """Sum over rows of the cross-entropy gradient with respect to the flat float64 parameters.

    Softmax regression (an ``mlp`` without hidden layers) has the closed form ``(softmax(x W^T + b) - onehot(y))^T
    [x, 1]``, computed without autograd (the same arithmetic for training, retraining and the replay); an MLP with
    hidden layers goes through autograd."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).double()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.shapes = [p.shape for _, p in self.model.named_parameters()]
        self.sizes = [p.numel() for _, p in self.model.named_parameters()]
        self.linear = len(self.shapes) == 2 and len(self.shapes[0]) == 2 and isinstance(model, MLP)

    def __call__(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(y) == 0:
            return torch.zeros_like(w)
        if self.linear:
            weight, bias = w[: self.sizes[0]].view(self.shapes[0]), w[self.sizes[0] :]
            flat = x.reshape(len(x), -1)
            residual = torch.softmax(torch.addmm(bias, flat, weight.T), dim=1)
            residual[torch.arange(len(y)), y] -= 1.0
            return torch.cat([(residual.T @ flat).reshape(-1), residual.sum(0)])
        w = w.detach().requires_grad_(True)
        params = {n: v.view(s) for n, v, s in zip(self.names, torch.split(w, self.sizes), self.shapes)}
        loss = nn.functional.cross_entropy(functional_call(self.model, params, (x,)), y, reduction="sum")
        return torch.autograd.grad(loss, w)[0]


def data_fingerprint(inputs: torch.Tensor, labels: torch.Tensor) -> str:
    return _fingerprint([inputs], [labels])


def _fingerprint(inputs: list[torch.Tensor], labels: list[torch.Tensor]) -> str:
    """:func:`data_fingerprint` of the concatenated parts, without concatenating them."""
    digest = hashlib.sha256()
    for part in inputs:
        digest.update(part.detach().cpu().float().contiguous().numpy().data)
    for part in labels:
        digest.update(part.detach().cpu().long().contiguous().numpy().data)
    return digest.hexdigest()[:32]


def _kept_runs(tensor: torch.Tensor, remove: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` without the rows ``remove``, as views of its contiguous runs of kept rows."""
    bounds = [-1, *sorted(int(i) for i in remove), len(tensor)]
    return [tensor[a + 1 : b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a + 1]


def _check_data(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    config = getattr(model, "config", None)
    shape = tuple(getattr(config, "input_shape", None) or ())
    if shape and tuple(inputs.shape[1:]) != shape:
        raise ConfigError(f"{what}: inputs of shape {tuple(inputs.shape[1:])}, the model takes {shape}")
    classes = getattr(config, "num_classes", None)
    if classes is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ConfigError(f"{what}: labels must be in 0..{classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    if len(inputs) != len(labels):
        raise ConfigError(f"{what}: {len(inputs)} inputs but {len(labels)} labels")


def train_with_cache(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, recipe: GDRecipe) -> DeltaGradCache:
    """Train ``model`` in place from its current (initial) weights by full-batch GD, caching every iteration."""
    check_model(model)
    _check_data(model, inputs, labels, "deltagrad training data")
    x, y = inputs.double(), labels.long()
    grad = _Gradient(model)
    w = _flat(model)
    n, steps = len(y), recipe.iterations
    params = torch.empty(steps, len(w), dtype=torch.float64)
    grads = torch.empty_like(params)
    for t in range(steps):
        g = grad(w, x, y) / n
        if not bool(torch.isfinite(g).all()):
            raise TrainingError(
                f"deltagrad: gradient descent diverged at iteration {t} (non-finite gradient) with learning_rate "
                f"{recipe.learning_rate}; lower learning_rate (an MLP with hidden layers needs about 0.1)"
            )
        params[t], grads[t] = w, g
        w = w - recipe.learning_rate * (g + recipe.l2 * w)
    _write(model, w)
    return DeltaGradCache(params, grads, w, recipe, n, data_fingerprint(inputs, labels))


def retrain_gd(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, recipe: GDRecipe) -> torch.Tensor:
    """The same GD from the model's current weights, without a cache (the reference DeltaGrad is compared with)."""
    check_model(model)
    x, y = inputs.double(), labels.long()
    grad = _Gradient(model)
    w = _flat(model)
    for _ in range(recipe.iterations):
        w = w - recipe.learning_rate * (grad(w, x, y) / len(y) + recipe.l2 * w)
    _write(model, w)
    return w


def _lbfgs_prepare(pairs: deque) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The compact L-BFGS matrix of ``pairs`` (Byrd, Nocedal and Schnabel, 1994) as ``(sigma, left, inverse)``:
    ``B = sigma I - left inverse left^T``; computed once per history (after each exact iteration), as the authors
    do, and applied by :func:`_lbfgs_apply`."""
    s = torch.stack([p[0] for p in pairs], dim=1)
    y = torch.stack([p[1] for p in pairs], dim=1)
    sigma = float(y[:, -1] @ s[:, -1] / (s[:, -1] @ s[:, -1]))
    sy = s.T @ y
    lower = torch.tril(sy, diagonal=-1)
    middle = torch.cat([torch.cat([sigma * s.T @ s, lower], 1), torch.cat([lower.T, -torch.diag(torch.diag(sy))], 1)])
    return sigma, torch.cat([sigma * s, y], dim=1), torch.linalg.inv(middle)


def _lbfgs_apply(prepared: tuple[float, torch.Tensor, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    sigma, left, inverse = prepared
    return sigma * v - left @ (inverse @ (left.T @ v))


def _lbfgs_product(pairs: deque, v: torch.Tensor) -> torch.Tensor:
    """``B v`` with ``B`` the compact L-BFGS matrix of ``pairs``."""
    return _lbfgs_apply(_lbfgs_prepare(pairs), v)


def replay(
    model: nn.Module,
    cache: DeltaGradCache,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    remove: torch.Tensor | None = None,
    add: tuple[torch.Tensor, torch.Tensor] | None = None,
    exact_every: int = 5,
    burn_in: int = 10,
    history: int = 2,
) -> tuple[torch.Tensor, DeltaGradCache, dict]:
    """DeltaGrad on the cache of a training on ``(inputs, labels)``: delete the rows ``remove`` and/or add the
    examples ``add``. Returns the new final parameters, the new cache (for the data set without ``remove``, with
    ``add`` appended) and statistics. ``model`` gives the architecture only (it is not changed)."""
    check_model(model)
    if exact_every < 1:
        raise ConfigError(f"exact_every (T0) must be >= 1, got {exact_every}")
    if burn_in < 0 or history < 1:
        raise ConfigError(f"burn_in (j0) must be >= 0 and history (m) >= 1, got {burn_in}, {history}")
    n = len(labels)
    if n != cache.num_samples or data_fingerprint(inputs, labels) != cache.fingerprint:
        raise ConfigError("deltagrad: the cache was recorded on another training set (fingerprint mismatch)")
    remove = torch.as_tensor([] if remove is None else remove, dtype=torch.long).reshape(-1)
    if remove.numel():
        if int(remove.min()) < 0 or int(remove.max()) >= n:
            raise ConfigError(
                f"deltagrad: deletion indices must be in 0..{n - 1}, got {int(remove.min())}..{int(remove.max())}"
            )
        if remove.unique().numel() != remove.numel():
            raise ConfigError("deltagrad: the deletion request repeats an index")
    xa = torch.empty(0, *inputs.shape[1:]) if add is None else add[0]
    ya = torch.empty(0, dtype=torch.long) if add is None else torch.as_tensor(add[1]).long()
    if add is not None:
        _check_data(model, xa, ya, "deltagrad addition")
    if not remove.numel() and not len(ya):
        raise ConfigError("deltagrad: empty request: give indices to delete or examples to add")
    if remove.numel() >= n and not len(ya):
        raise ConfigError(f"deltagrad: the request deletes all {n} training examples")
    keep = torch.ones(n, dtype=torch.bool)
    keep[remove] = False
    x, y = inputs.double(), labels.long()
    # the kept rows, copied once (not at every exact iteration); the exact gradient is then computed on the same
    # rows in the same order as retraining computes it, so exact_every=1 reproduces retraining to rounding
    xk, yk = (x[keep], y[keep]) if remove.numel() else (x, y)
    xr, yr, xa = x[remove], y[remove], xa.double()
    new_n = len(yk) + len(ya)
    grad = _Gradient(model)
    recipe = cache.recipe
    steps = len(cache.params)
    params = torch.empty_like(cache.params)
    grads = torch.empty_like(cache.grads)
    pairs: deque = deque(maxlen=history)
    prepared = None
    w = cache.params[0].clone()
    exact = skipped = unstable = 0
    for t in range(steps):
        v = w - cache.params[t]
        if t < burn_in or (t - burn_in) % exact_every == 0 or not pairs:
            g_keep, g_r = grad(w, xk, yk), grad(w, xr, yr)
            new_sum = g_keep + grad(w, xa, ya) if len(ya) else g_keep
            dy = (g_keep + g_r) / n - cache.grads[t]
            sy, ss = float(v @ dy), float(v @ v)
            if not (sy > 1e-12 * ss and ss > 0):
                skipped += 1  # no positive curvature along s (s = 0 at t = 0; a non-convex model)
            elif recipe.learning_rate * (float(dy @ dy) / sy + recipe.l2) >= 2:
                # B s = y puts an eigenvalue >= |y|^2 / s.y into B: past 2 / learning_rate the approximate
                # iterations amplify w' - w (an MLP: s.y small against |y|^2). Never for a convex model at a
                # stable learning rate (there |y|^2 / s.y <= lambda_max)
                unstable += 1
            else:
                pairs.append((v, dy))
                prepared = None
            exact += 1
        else:
            if prepared is None:
                prepared = _lbfgs_prepare(pairs)
            full = cache.grads[t] + _lbfgs_apply(prepared, v)
            new_sum = n * full - grad(w, xr, yr)
            if len(ya):
                new_sum = new_sum + grad(w, xa, ya)
        g = new_sum / new_n
        params[t], grads[t] = w, g
        w = w - recipe.learning_rate * (g + recipe.l2 * w)
    added = [add[0].to(inputs.dtype), ya.to(labels.dtype)] if add is not None else [inputs[:0], labels[:0]]
    fingerprint = _fingerprint(_kept_runs(inputs, remove) + added[:1], _kept_runs(labels, remove) + added[1:])
    new_cache = DeltaGradCache(params, grads, w, recipe, new_n, fingerprint)
    stats = {"iterations": steps, "exact_iterations": exact, "skipped_pairs": skipped, "unstable_pairs": unstable,
             "deleted": int(remove.numel()), "added": len(ya)}  # fmt: skip
    return w, new_cache, stats


def save_cache(cache: DeltaGradCache, path: str | Path) -> int:
    """Write ``cache`` as safetensors; returns its size in bytes."""
    info = {"format": CACHE_FORMAT, "num_samples": cache.num_samples, "fingerprint": cache.fingerprint,
            "recipe": {"iterations": cache.recipe.iterations, "learning_rate": cache.recipe.learning_rate,
                       "l2": cache.recipe.l2}}  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensors = {"params": cache.params.contiguous(), "grads": cache.grads.contiguous(), "final": cache.final}
    save_tensors(tensors, str(path), metadata={"deltagrad": json.dumps(info, sort_keys=True)})
    return Path(path).stat().st_size


def load_cache(path: str | Path, model: nn.Module) -> DeltaGradCache:
    """Read a cache written by :func:`save_cache`; one whose final parameters are not ``model``'s is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"deltagrad cache not found: {path} (write one with train_with_cache + save_cache)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {}).get("deltagrad", "{}"))
            if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
                raise ConfigError(f"{path} is not a deltagrad cache (no {CACHE_FORMAT!r} metadata)")
            tensors = {k: handle.get_tensor(k) for k in ("params", "grads", "final")}
            recipe = GDRecipe(**info["recipe"])
            cache = DeltaGradCache(tensors["params"], tensors["grads"], tensors["final"], recipe,
                                   int(info["num_samples"]), str(info["fingerprint"]))  # fmt: skip
    except (ConfigError, InputNotFoundError):
        raise
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ConfigError(f"deltagrad cache {path} is corrupt: {first_line(exc)}") from None
    w = _flat(model)
    if cache.final.shape != w.shape or not torch.allclose(cache.final, w, atol=1e-5, rtol=1e-5):
        raise ConfigError(f"{path}: the cache does not end at this model's parameters: it is from another run or model")
    return cache


def _forget_rows(task: UnlearningTask) -> torch.Tensor:
    if task.forget_indices is not None and task.retain_indices is not None:
        order = torch.sort(torch.cat([task.retain_indices, task.forget_indices])).values
        return torch.searchsorted(order, task.forget_indices)
    return torch.arange(len(task.retain), len(task.retain) + len(task.forget))


@register_method("deltagrad", DeltaGradConfig, tags=("classifier",))
def deltagrad(model: nn.Module, task: UnlearningTask, config: DeltaGradConfig, *, work_dir: Path | None = None) -> dict:
    """DeltaGrad (Wu et al., ICML 2020): replay the cached GD trajectory without the forget set."""
    check_model(model)
    start = time.perf_counter()
    inputs, labels = task.training_data().tensors
    cache_bytes = None
    if config.cache_path is not None:
        cache = load_cache(config.cache_path, model)
        cache_bytes = Path(config.cache_path).stat().st_size
        source = str(Path(config.cache_path).absolute())
    elif config.require_cache:
        raise ConfigError(
            "deltagrad: no cache_path, and require_cache is set: train the model with "
            "classifiers.methods.deltagrad.train_with_cache and save_cache, then pass cache_path"
        )
    else:
        reinitialise(model, config.seed)
        cache = train_with_cache(model, inputs, labels, config)
        source = "re-run"
    prepare_seconds = time.perf_counter() - start
    w, new_cache, stats = replay(model, cache, inputs, labels, remove=_forget_rows(task),
                                 exact_every=config.exact_every, burn_in=config.burn_in, history=config.history)  # fmt: skip
    _write(model, w)
    model.eval()
    seconds = time.perf_counter() - start
    return {
        "method": "deltagrad",
        "seconds": round(seconds, 4),
        "prepare_seconds": round(prepare_seconds, 4),
        "unlearn_seconds": round(seconds - prepare_seconds, 4),
        "excluded_seconds": round(prepare_seconds, 4) if source == "re-run" else 0.0,
        "cache": {
            "source": source,
            "bytes": cache_bytes if cache_bytes is not None else cache.nbytes,
            "iterations": len(cache.params),
            "parameters": int(cache.params.shape[1]),
        },  # fmt: skip
        "exact_every": config.exact_every,
        "burn_in": config.burn_in,
        "history": config.history,
        **stats,
    }
