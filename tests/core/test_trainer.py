"""The shared trainer: resumption, accumulation, precision, subsets, checkpoints, clipping, multi-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from concept_erase.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError, EmptyDataError
from concept_erase.core.trainer import Trainer, TrainerConfig

HERE = Path(__file__).parent


def make_task(n: int = 50, batch: int = 4, dropout: float = 0.2, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 3)
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    return model, DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)


def ce(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Interrupt(Exception):
    pass


def interrupt_at(step):
    def hook(trainer):
        if trainer.global_step == step:
            raise Interrupt

    return hook


RESUME_KW = dict(
    max_train_steps=20,  # 13 micro-batches per epoch: the run crosses epochs and ends mid-epoch
    learning_rate=1e-2,
    adam_weight_decay=0.01,
    gradient_accumulation_steps=2,
    lr_scheduler="cosine",
    lr_warmup_steps=2,
    checkpointing_steps=3,
    show_progress=False,
)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    model, loader = make_task()
    Trainer(model, TrainerConfig(**RESUME_KW), loader, ce).train()
    reference = params(model)

    model, loader = make_task()
    with pytest.raises(Interrupt):
        Trainer(
            model, TrainerConfig(output_dir=str(tmp_path), **RESUME_KW), loader, ce, after_step=interrupt_at(8)
        ).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    model, loader = make_task()  # a fresh process would rebuild everything from scratch like this
    config = TrainerConfig(output_dir=str(tmp_path), resume_from_checkpoint="latest", **RESUME_KW)
    result = Trainer(model, config, loader, ce).train()
    assert result.resumed_from.endswith("checkpoint-6")
    assert result.global_step == 20 and len(result.losses) == 14
    for name, value in params(model).items():
        assert torch.equal(value, reference[name]), name


def test_resume_from_explicit_path(tmp_path):
    kw = {**RESUME_KW, "lr_scheduler": "constant"}  # the schedule's length must not depend on max_train_steps
    model, loader = make_task()
    Trainer(model, TrainerConfig(**{**kw, "max_train_steps": 9}), loader, ce).train()
    reference = params(model)
    model, loader = make_task()
    Trainer(model, TrainerConfig(output_dir=str(tmp_path), **{**kw, "max_train_steps": 6}), loader, ce).train()
    model, loader = make_task()
    config = TrainerConfig(
        output_dir=str(tmp_path / "other"),
        resume_from_checkpoint=str(tmp_path / "checkpoint-3"),
        **{**kw, "max_train_steps": 9},
    )
    Trainer(model, config, loader, ce).train()
    assert all(torch.equal(v, reference[n]) for n, v in params(model).items())


def test_seeded_runs_are_identical_and_seed_matters():
    runs = []
    for seed in (5, 5, 6):
        model, loader = make_task()
        Trainer(
            model, TrainerConfig(max_train_steps=8, seed=seed, learning_rate=1e-2, show_progress=False), loader, ce
        ).train()
        runs.append(params(model))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_checkpoint_limit_prunes_by_integer_step(tmp_path):
    model, loader = make_task()
    config = TrainerConfig(
        output_dir=str(tmp_path),
        max_train_steps=12,
        checkpointing_steps=2,
        checkpoints_total_limit=2,
        show_progress=False,
    )
    Trainer(model, config, loader, ce).train()
    # lexicographic order would keep checkpoint-8 over checkpoint-10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-12"]
    assert (tmp_path / "checkpoint-12" / "trainer_state.json").is_file()


def test_gradient_accumulation_matches_a_larger_batch():
    model_a, _ = make_task(n=32, dropout=0.0)
    model_b, _ = make_task(n=32, dropout=0.0)
    _, loader_small = make_task(n=32, batch=4, dropout=0.0)
    _, loader_big = make_task(n=32, batch=8, dropout=0.0)
    initial = params(model_a)
    common = dict(max_train_steps=4, optimizer="sgd", learning_rate=0.1, show_progress=False, max_grad_norm=None)
    result = Trainer(model_a, TrainerConfig(gradient_accumulation_steps=2, **common), loader_small, ce).train()
    Trainer(model_b, TrainerConfig(**common), loader_big, ce).train()
    assert result.global_step == 4 and len(result.losses) == 4  # 4 optimizer steps of 2 micro-batches each
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        # every tensor moved: equal because both runs trained the same way, not because neither trained
        assert (a.detach() - initial[name]).abs().max() > 1e-3, name


def test_parameter_subset_by_pattern_and_module_filter():
    for selection in (["^3\\."], lambda name, module: name == "3"):
        model, loader = make_task()
        model[0].weight.requires_grad_(False)  # a flag the caller set must survive training
        before = params(model)
        result = Trainer(
            model, TrainerConfig(max_train_steps=5, show_progress=False), loader, ce, trainable=selection
        ).train()
        after = params(model)
        assert result.trained_parameters == ["3.bias", "3.weight"]
        assert torch.equal(before["0.weight"], after["0.weight"]) and torch.equal(before["0.bias"], after["0.bias"])
        assert not torch.equal(before["3.weight"], after["3.weight"])
        assert model[0].weight.requires_grad is False and model[0].bias.requires_grad is True


def test_selection_matching_nothing_is_a_clear_error():
    model, loader = make_task()
    with pytest.raises(ConfigError, match="no trainable parameters selected"):
        Trainer(model, TrainerConfig(max_train_steps=1, show_progress=False), loader, ce, trainable=["nope"]).train()


def test_bf16_mixed_precision_keeps_trainable_parameters_in_fp32():
    model, loader = make_task(dropout=0.0)
    model.to(torch.bfloat16)
    model[0].requires_grad_(False)  # frozen half-precision part stays in bf16

    def loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]).float(), batch[1])

    result = Trainer(
        model, TrainerConfig(max_train_steps=4, mixed_precision="bf16", show_progress=False), loader, loss
    ).train()
    assert model[3].weight.dtype == torch.float32 and model[0].weight.dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.gpu
def test_fp16_mixed_precision_on_cuda_computes_in_fp16_and_trains_fp32_weights():
    model, loader = make_task(dropout=0.0)
    before = params(model)
    seen = set()
    model[0].register_forward_hook(lambda module, inputs, output: seen.add((output.device.type, output.dtype)))
    config = TrainerConfig(max_train_steps=8, mixed_precision="fp16", learning_rate=1e-2, show_progress=False)
    trainer = Trainer(model, config, loader, ce)
    result = trainer.train()
    assert seen == {("cuda", torch.float16)}  # autocast ran the layers in half precision on the GPU
    assert trainer.accelerator.scaler is not None  # fp16 needs a loss scaler (bf16 does not)
    assert all(torch.isfinite(torch.tensor(result.losses))) and result.global_step == 8
    for name, value in params(trainer.model).items():
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
        assert not torch.equal(value.cpu(), before[name]), name  # the scaler cannot have skipped every step


def test_gradient_clipping_bounds_the_update():
    model, loader = make_task(dropout=0.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = TrainerConfig(
        max_train_steps=1, optimizer="sgd", learning_rate=1.0, max_grad_norm=0.01, show_progress=False
    )
    Trainer(model, config, loader, ce).train()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0 < (after - before).norm() <= 0.01 + 1e-6


def test_after_step_hook_runs_once_per_optimizer_step():
    model, loader = make_task()
    seen = []
    config = TrainerConfig(max_train_steps=7, gradient_accumulation_steps=3, show_progress=False)
    Trainer(model, config, loader, ce, after_step=lambda t: seen.append(t.global_step)).train()
    assert seen == list(range(1, 8))


def test_subclass_can_override_compute_loss():
    class MyTrainer(Trainer):
        calls = 0

        def compute_loss(self, model, batch):
            MyTrainer.calls += 1
            return ce(model, batch)

    model, loader = make_task()
    MyTrainer(model, TrainerConfig(max_train_steps=3, show_progress=False), loader).train()
    assert MyTrainer.calls == 3
    with pytest.raises(NotImplementedError, match="compute_loss"):
        Trainer(model, TrainerConfig(max_train_steps=1, show_progress=False), loader).train()


def test_tensorboard_tracker_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    model, loader = make_task()
    config = TrainerConfig(output_dir=str(tmp_path), max_train_steps=3, report_to="tensorboard", show_progress=False)
    Trainer(model, config, loader, ce).train()
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_train_steps": 0}, "max_train_steps must be >= 1"),
        ({"lr_scheduler": "warp"}, "accepted values: linear"),
        ({"checkpoints_total_limit": 0}, "checkpoints_total_limit"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainerConfig(**kwargs)


def test_unknown_tracker_is_refused():
    model, loader = make_task()
    with pytest.raises(ConfigError, match="accepted values"):
        Trainer(model, TrainerConfig(max_train_steps=1, report_to="carrier_pigeon"), loader, ce).train()


def test_empty_loader_is_refused():
    model, _ = make_task()
    empty = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(EmptyDataError, match="empty"):
        Trainer(model, TrainerConfig(), empty, ce)


def test_missing_and_corrupt_checkpoints(tmp_path):
    model, loader = make_task()
    before = params(model)
    missing = TrainerConfig(resume_from_checkpoint=str(tmp_path / "checkpoint-99"), show_progress=False)
    with pytest.raises(CheckpointNotFoundError, match="not found"):
        Trainer(model, missing, loader, ce).train()
    Trainer(
        model,
        TrainerConfig(output_dir=str(tmp_path), max_train_steps=2, checkpointing_steps=2, show_progress=False),
        loader,
        ce,
    ).train()
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")
    model, loader = make_task()
    corrupt = TrainerConfig(output_dir=str(tmp_path), resume_from_checkpoint="latest", show_progress=False)
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(model, corrupt, loader, ce).train()
    (checkpoint / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        Trainer(model, corrupt, loader, ce).train()
    assert all(torch.equal(v, before[n]) for n, v in params(model).items())


def test_latest_without_checkpoints_starts_fresh(tmp_path):
    model, loader = make_task()
    config = TrainerConfig(
        output_dir=str(tmp_path), resume_from_checkpoint="latest", max_train_steps=2, show_progress=False
    )
    result = Trainer(model, config, loader, ce).train()
    assert result.resumed_from is None and result.global_step == 2


def _run(args, env_extra=None):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


LAUNCHERS = {
    "torchrun": lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)],
    # on CPU, ``--multi_gpu`` with ACCELERATE_USE_CPU=1 starts the same elastic launcher with gloo
    "accelerate": lambda port: [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_match_single_process(tmp_path, launcher, free_port):
    """2 CPU processes (gloo) with 4 samples each == 1 process with 8: ranks identical, result matches."""
    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir(), single.mkdir()
    script = str(HERE / "dist_train.py")
    proc = _run([*LAUNCHERS[launcher](free_port), script, str(multi), "4"])
    assert "rank 0 of 2" in proc.stdout and "rank 1 of 2" in proc.stdout
    _run([sys.executable, script, str(single), "8"])
    rank0, rank1 = load_file(str(multi / "rank0.safetensors")), load_file(str(multi / "rank1.safetensors"))
    alone = load_file(str(single / "rank0.safetensors"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], alone[name], rtol=1e-5, atol=1e-6)
