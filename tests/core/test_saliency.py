"""Saliency scores, radix-select thresholds, the mask file and the applier that keeps masked weights frozen.

Also runnable as ``python -m torch.distributed.run --nproc_per_node 2 tests/test_saliency.py --dist-worker OUT``:
that is the worker of the two-process test below.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from concept_erase.core.errors import ConfigError, EmptyDataError, MaskError
from concept_erase.core.saliency import (
    MaskApplier,
    SaliencyMask,
    compute_saliency,
    kth_largest,
    num_kept,
    select_parameters,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3))


def make_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def make_loader(n: int = 32, batch_size: int = 8, shape=(6,), seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def ce(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def random_scores(seed: int = 0, shapes=((16, 6), (16,), (3, 16), (3,))) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.rand(shape, generator=g) for i, shape in enumerate(shapes)}


def brute_force_threshold(tensors, k: int) -> float:
    return torch.cat([t.reshape(-1).float() for t in tensors]).sort(descending=True).values[k - 1].item()


# ---------------------------------------------------------------------------------------------------- radix select


def _distribution(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(n, generator=g)
    if kind == "heavy_tailed":  # many orders of magnitude, incl. subnormals and an infinity
        x = torch.randn(n, generator=g).abs() * 10.0 ** torch.randint(-44, 30, (n,), generator=g).float()
        x[0] = float("inf")
        return x
    if kind == "ties":
        return torch.randint(0, 5, (n,), generator=g).float()
    if kind == "mostly_zero":
        return torch.where(torch.rand(n, generator=g) < 0.9, 0.0, torch.rand(n, generator=g))
    return -torch.zeros(n)  # negative zeros: the sign bit must not matter


@pytest.mark.parametrize("kind", ["uniform", "heavy_tailed", "ties", "mostly_zero", "negative_zero"])
@pytest.mark.parametrize("n", [1, 7, 1000, 20011])
def test_kth_largest_equals_sort(kind, n):
    g = torch.Generator().manual_seed(n)
    values = _distribution(kind, n, g)
    parts = [values[: n // 3].reshape(-1, 1), values[n // 3 :]]  # several tensors, 2-D too
    for k in sorted({1, 2, max(1, n // 3), max(1, n // 2), n}):
        if k <= n:
            expected = brute_force_threshold(parts, k)
            assert kth_largest(parts, k, chunk_size=97) == expected, (kind, n, k)
            assert kth_largest(parts, k) == expected


def test_kth_largest_rejects_bad_k():
    with pytest.raises(ValueError):
        kth_largest([torch.rand(5)], 6)
    with pytest.raises(ValueError):
        kth_largest([torch.rand(5)], 0)


@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.5, 0.9, 1.0])
def test_global_mask_matches_brute_force(ratio):
    scores = random_scores()
    mask = SaliencyMask.from_scores(scores, ratio=ratio, chunk_size=50)
    total = sum(s.numel() for s in scores.values())
    k = num_kept(total, ratio)
    threshold = brute_force_threshold(scores.values(), k)
    assert mask.metadata["threshold"] == threshold
    for name, s in scores.items():
        assert torch.equal(mask.masks[name], s >= threshold)
    assert mask.summary()["kept"] == k  # continuous values: no ties
    if ratio == 1.0:
        assert all(m.all() for m in mask.masks.values())


@pytest.mark.parametrize("mode", ["global", "per_layer"])
def test_zero_scores_are_not_kept_when_they_reach_the_threshold(mode):
    """More than half the scores exactly 0 (dead ReLUs, zero-loss samples): a 50% mask keeps only the positive ones,
    not the whole model (which ">= threshold" with a zero threshold would)."""
    g = torch.Generator().manual_seed(0)
    scores = {"w": torch.where(torch.rand(400, generator=g) < 0.7, 0.0, torch.rand(400, generator=g) + 0.1)}
    mask = SaliencyMask.from_scores(scores, ratio=0.5, mode=mode)
    assert torch.equal(mask.masks["w"], scores["w"] > 0)
    assert 0.2 < mask.fraction_kept < 0.5
    assert SaliencyMask.from_scores(scores, ratio=1.0, mode=mode).fraction_kept == 1.0  # ratio 1 keeps everything


def test_per_layer_mask_matches_brute_force_with_ties():
    g = torch.Generator().manual_seed(3)
    scores = {"a": torch.randint(0, 4, (50, 4), generator=g).float(), "b": torch.rand(33, generator=g)}
    scores["b"][:5] = 0.0
    mask = SaliencyMask.from_scores(scores, ratio=0.4, mode="per_layer", chunk_size=16)
    for name, s in scores.items():
        k = num_kept(s.numel(), 0.4)
        threshold = brute_force_threshold([s], k)
        assert mask.metadata["thresholds"][name] == threshold
        assert torch.equal(mask.masks[name], s >= threshold)
        assert int(mask.masks[name].sum()) >= k  # ties with the k-th value are all kept
    assert int(mask.masks["b"].sum()) == num_kept(33, 0.4)  # no ties in "b" around its threshold


def test_absolute_mode_and_option_errors():
    scores = random_scores()
    mask = SaliencyMask.from_scores(scores, mode="absolute", threshold=0.25)
    assert all(torch.equal(mask.masks[n], s >= 0.25) for n, s in scores.items())
    for ratio in (0, 1.5, -1):
        with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\].*" + str(ratio)):
            SaliencyMask.from_scores(scores, ratio=ratio)
    with pytest.raises(ConfigError, match="accepted values: 'global', 'per_layer', 'absolute'"):
        SaliencyMask.from_scores(scores, mode="top")
    with pytest.raises(ConfigError, match="threshold"):
        SaliencyMask.from_scores(scores, mode="absolute")
    with pytest.raises(MaskError, match="negative or NaN"):
        SaliencyMask.from_scores({"x": torch.tensor([1.0, float("nan")])})
    with pytest.raises(MaskError, match="negative"):
        SaliencyMask.from_scores({"x": torch.tensor([1.0, -2.0])})


# ---------------------------------------------------------------------------------------------------- saliency


def hand_saliency(model, loader) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).eval().requires_grad_(True)
    names, params = zip(*model.named_parameters())
    total = [torch.zeros_like(p) for p in params]
    for batch in loader:
        grads = torch.autograd.grad(ce(model, batch), params)
        total = [t + g for t, g in zip(total, grads)]
    return {n: t.abs() for n, t in zip(names, total)}


@pytest.mark.parametrize("make_model, shape", [(make_mlp, (6,)), (make_convnet, (1, 8, 8))])
def test_saliency_equals_abs_of_summed_gradients(make_model, shape):
    model, loader = make_model(), make_loader(shape=shape)
    model.train()
    before = snapshot(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    scores = compute_saliency(model, loader, ce, show_progress=False)
    expected = hand_saliency(model, loader)
    assert scores.keys() == expected.keys()
    for name in expected:
        assert scores[name].dtype == torch.float32
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-6, atol=1e-7)
    for name, p in model.named_parameters():
        assert p.grad is None and p.requires_grad and torch.equal(p, before[name])
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # eval mode: no BN statistics update
    assert model.training and all(m.training for m in model.modules())


def test_saliency_subset_restores_flags_modes_and_existing_grads():
    model, loader = make_mlp(), make_loader()
    model.eval()
    model[0].train()  # mixed modes are restored module by module
    model[3].bias.requires_grad_(False)
    existing = torch.ones_like(model[0].weight)
    model[0].weight.grad = existing
    scores = compute_saliency(model, loader, ce, params=[r"^3\."], show_progress=False)
    assert set(scores) == {"3.weight", "3.bias"}  # explicit patterns also reach frozen parameters
    torch.testing.assert_close(scores["3.bias"], hand_saliency(model, loader)["3.bias"])
    assert model[0].weight.grad is existing and model[3].weight.grad is None
    assert not model[3].bias.requires_grad and model[0].weight.requires_grad
    assert model[0].training and not model.training and not model[3].training
    first_layer = compute_saliency(model, loader, ce, params=lambda name, module: name == "0", show_progress=False)
    assert set(first_layer) == {"0.weight", "0.bias"}  # a module filter picks that module's own parameters


def test_saliency_errors():
    model = make_mlp()
    with pytest.raises(EmptyDataError):
        compute_saliency(model, [], ce, show_progress=False)
    with pytest.raises(ConfigError, match="no parameters selected.*0.weight"):
        compute_saliency(model, make_loader(), ce, params=["nothing_matches"], show_progress=False)
    with pytest.raises(ConfigError, match="invalid regex"):
        select_parameters(model, ["("])
    with pytest.raises(ConfigError, match="scalar"):
        compute_saliency(model, make_loader(), lambda m, b: m(b[0]), show_progress=False)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- masks


def test_random_like_keeps_per_layer_counts():
    mask = SaliencyMask.from_scores(random_scores(), ratio=0.3, mode="per_layer")
    first, again, other = (SaliencyMask.random_like(mask, seed=s) for s in (0, 0, 1))
    for name, m in mask.masks.items():
        assert int(first.masks[name].sum()) == int(m.sum()) and first.masks[name].shape == m.shape
        assert torch.equal(first.masks[name], again.masks[name])
    assert not torch.equal(first.masks["t0"], mask.masks["t0"])
    assert not torch.equal(first.masks["t0"], other.masks["t0"])
    assert first.metadata["mode"] == "random" and first.metadata["seed"] == 0


def test_save_load_roundtrip_size_and_corruption(tmp_path):
    shapes = ((300, 200), (200,), (10, 20, 3, 3), (7,))
    mask = SaliencyMask.from_scores(random_scores(shapes=shapes), ratio=0.5, loss_name="forget_ce")
    path = mask.save(tmp_path / "sub" / "mask.safetensors")
    loaded = SaliencyMask.load(path)
    assert list(loaded.masks) == list(mask.masks)
    assert all(torch.equal(loaded.masks[n], m) for n, m in mask.masks.items())
    assert loaded.metadata == mask.metadata and loaded.metadata["loss_name"] == "forget_ce"
    numel = sum(m.numel() for m in mask.masks.values())
    assert path.stat().st_size <= numel / 8 + 2048
    assert [p.name for p in path.parent.iterdir()] == ["mask.safetensors"]  # no temporary left behind

    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    info = json.loads(header["mask"])
    assert info["metadata"]["mode"] == "global" and info["parameters"][0]["shape"] == [300, 200]
    assert info["parameters"][0]["kept"] == int(mask.masks["t0"].sum())

    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[-1] ^= 0xFF  # data bits no longer match the recorded kept count
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    save_file({"t0": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    for name in ("truncated", "flipped", "plain", "missing"):
        with pytest.raises(MaskError):
            SaliencyMask.load(tmp_path / f"{name}.safetensors")


def test_validate_names_and_shapes(tmp_path):
    model = make_mlp()
    scores = compute_saliency(model, make_loader(), ce, show_progress=False)
    mask = SaliencyMask.from_scores(scores)
    mask.validate(model)
    SaliencyMask.load(mask.save(tmp_path / "m.safetensors"), model=model)
    wider = nn.Sequential(nn.Linear(6, 17), nn.Tanh(), nn.Dropout(0.5), nn.Linear(17, 3))
    with pytest.raises(MaskError, match=r"'0.weight' has shape \(16, 6\) but the model parameter has shape \(17, 6\)"):
        mask.validate(wider)
    with pytest.raises(MaskError, match="'0.weight'"):
        SaliencyMask.load(tmp_path / "m.safetensors", model=wider)
    with pytest.raises(MaskError, match=r"'0.weight' \(mask shape \(16, 6\)\) is not in the model"):
        mask.applier(nn.Linear(6, 3))


def test_summary_and_plot(tmp_path):
    mask = SaliencyMask.from_scores(random_scores(), ratio=0.25, mode="per_layer")
    stats = mask.summary()
    assert stats["total"] == 16 * 6 + 16 + 48 + 3
    assert stats["kept"] == sum(v["kept"] for v in stats["per_layer"].values())
    assert stats["per_layer"]["t0"] == {"numel": 96, "kept": 24, "fraction_kept": 0.25}
    assert mask.fraction_kept == stats["fraction_kept"]
    png = mask.plot_summary(tmp_path / "summary.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------- applier

OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.1),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01),
}


def train(model, optimizer, loader, steps: int, before_step=None, after_step=None) -> None:
    model.train()
    done = 0
    while done < steps:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            ce(model, batch).backward()
            if before_step:
                before_step()
            optimizer.step()
            if after_step:
                after_step(None)
            done += 1
            if done == steps:
                return


def salient_mask(model) -> SaliencyMask:
    return SaliencyMask.from_scores(compute_saliency(model, make_loader(), ce, show_progress=False), ratio=0.5)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_applier_keeps_masked_weights_bit_identical(optimizer):
    model = make_mlp()
    mask, original = salient_mask(model), snapshot(model)
    applier = mask.applier(model)
    assert applier.frozen_fraction == pytest.approx(0.5, abs=0.01)
    train(model, OPTIMIZERS[optimizer](model.parameters()), make_loader(seed=5), steps=20, after_step=applier)
    assert applier.is_intact()
    for name, p in model.named_parameters():
        keep = mask.masks[name]
        assert torch.equal(p.detach()[~keep], original[name][~keep]), name
        assert (p.detach()[keep] != original[name][keep]).float().mean() > 0.9, name


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_masking_gradients_alone_moves_masked_weights(optimizer):
    """The trap the applier exists for: zero gradients, yet momentum and weight decay still move the weights."""
    model = make_mlp()
    mask, original = salient_mask(model), snapshot(model)
    applier = mask.applier(model)
    train(model, OPTIMIZERS[optimizer](model.parameters()), make_loader(seed=5), 20, before_step=applier.mask_gradients)
    assert not applier.is_intact()
    moved = [
        (p.detach()[~mask.masks[n]] != original[n][~mask.masks[n]]).float().mean() for n, p in model.named_parameters()
    ]
    assert min(moved) > 0.9


def test_grad_hooks_zero_frozen_gradients_and_state_dict():
    model = make_mlp()
    mask, original = salient_mask(model), snapshot(model)
    applier = MaskApplier(mask, model)
    handles = applier.register_grad_hooks()
    assert len(handles) == 4
    ce(model, next(iter(make_loader()))).backward()
    assert all((p.grad[~mask.masks[n]] == 0).all() for n, p in model.named_parameters())
    applier.remove_grad_hooks()
    state = applier.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    train(model, OPTIMIZERS["adamw"](model.parameters()), make_loader(), steps=3)  # no restore: drifts
    fresh = MaskApplier(mask, model)  # built from the drifted weights ...
    fresh.load_state_dict(state)  # ... and corrected by the checkpointed frozen values
    fresh()
    assert all(
        torch.equal(p.detach()[~mask.masks[n]], original[n][~mask.masks[n]]) for n, p in model.named_parameters()
    )
    other = MaskApplier(SaliencyMask.random_like(mask, seed=3), model)
    with pytest.raises(MaskError, match="different mask"):
        other.load_state_dict(state)


def test_applier_follows_parameters_converted_after_construction():
    """``model.to(...)`` after building the applier (as ``accelerator.prepare`` does) must not break restoring."""
    model = make_mlp()
    mask, original = salient_mask(model), snapshot(model)
    applier = mask.applier(model)
    model.double()  # same Parameter objects, new storage (a device move works the same way)
    loader = DataLoader(
        TensorDataset(*(t.double() if t.is_floating_point() else t for t in make_loader().dataset.tensors))
    )
    train(model, OPTIMIZERS["sgd"](model.parameters()), loader, steps=5, after_step=applier)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float64
        assert torch.equal(p.detach()[~mask.masks[name]], original[name][~mask.masks[name]].double()), name


def test_applier_with_the_shared_trainer(tmp_path):
    from concept_erase.core.trainer import Trainer, TrainerConfig

    model = make_mlp()
    mask, original = salient_mask(model), snapshot(model)
    applier = mask.applier(model)
    config = TrainerConfig(
        max_train_steps=8,
        learning_rate=0.05,
        adam_weight_decay=0.1,
        output_dir=str(tmp_path),
        checkpointing_steps=4,
        show_progress=False,
    )
    Trainer(model, config, make_loader(), ce, after_step=applier, extra_state={"saliency": applier}).train()
    assert applier.is_intact()
    assert any(not torch.equal(p, original[n]) for n, p in model.named_parameters())
    saved = load_file(str(next(tmp_path.glob("checkpoint-8/extra_saliency.safetensors"))))
    assert set(saved) == set(applier.state_dict())


def test_tiny_unet_saliency_and_frozen_training(tiny_unet):
    unet = tiny_unet
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 8, generator=g)) for _ in range(2)]

    def loss(model, batch):
        latents, text = batch
        return nn.functional.mse_loss(model(latents, 10, encoder_hidden_states=text).sample, latents)

    scores = compute_saliency(unet, batches, loss, params=["attn2"], show_progress=False)
    assert scores and all("attn2" in n for n in scores)
    mask = SaliencyMask.from_scores(scores, ratio=0.5, loss_name="denoising_mse")
    original = snapshot(unet)
    applier = mask.applier(unet)
    optimizer = torch.optim.AdamW([p for n, p in unet.named_parameters() if n in scores], lr=1e-2, weight_decay=0.1)
    for batch in batches * 2:
        optimizer.zero_grad()
        loss(unet, batch).backward()
        optimizer.step()
        applier()
    assert applier.is_intact()
    changed = [n for n, p in unet.named_parameters() if not torch.equal(p, original[n])]
    assert changed and all(n in scores for n in changed)


# ---------------------------------------------------------------------------------------------------- two processes


def dist_worker(out: Path) -> None:
    """Each rank computes saliency on its half of the data, plain (gloo all_reduce) and through Accelerate + DDP."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    model, full = make_mlp(), make_loader(n=32, batch_size=8)
    x, y = full.dataset.tensors
    half = len(x) // world
    loader = DataLoader(
        TensorDataset(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]), batch_size=8
    )
    plain = compute_saliency(model, loader, ce, show_progress=False)
    wrapped = accelerator.prepare_model(model)
    through = compute_saliency(wrapped, loader, ce, accelerator=accelerator, show_progress=False)
    assert all(p.grad is None for p in wrapped.parameters())
    tensors = {**{f"plain.{n}": s for n, s in plain.items()}, **{f"accelerate.{n}": s for n, s in through.items()}}
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    print(f"rank {rank} of {world} done ({type(wrapped).__name__})")
    # tear gloo down before interpreter exit, otherwise a rank can abort ("terminate called ...") at shutdown
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_sum_gradients_across_ranks(tmp_path, free_port):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    args = [*command, str(Path(__file__).resolve()), "--dist-worker", str(tmp_path)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2 done (DistributedDataParallel)" in proc.stdout
    expected = compute_saliency(make_mlp(), make_loader(n=32, batch_size=8), ce, show_progress=False)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for name, value in expected.items():
        for result in ranks:
            torch.testing.assert_close(result[f"plain.{name}"], value, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(result[f"accelerate.{name}"], value, rtol=1e-5, atol=1e-7)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--dist-worker":
        dist_worker(Path(sys.argv[2]))
