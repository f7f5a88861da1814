"""TrainerConfig.gradient_checkpointing: same loss and gradients, switched on only while training, clear refusals."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from concept_erase.core.errors import ConfigError
from concept_erase.core.trainer import Trainer, TrainerConfig


def denoising_data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    latents, text, noise = (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 5, 8, generator=g),
        torch.randn(2, 4, 8, 8, generator=g),
    )
    return DataLoader(TensorDataset(latents, text, noise), batch_size=2)


def train_once(unet, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], list[bool]]:
    """One SGD step (no clipping, no momentum: the update is -lr * gradient); returns the loss, the gradient read
    back from the update, and whether checkpointing was on during each loss."""
    seen: list[bool] = []

    def loss(model, batch):
        latents, text, noise = batch
        seen.append(model.is_gradient_checkpointing)
        timesteps = torch.tensor([10, 500])
        return torch.nn.functional.mse_loss(model(latents, timesteps, encoder_hidden_states=text).sample, noise)

    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    config = TrainerConfig(
        max_train_steps=1,
        optimizer="sgd",
        learning_rate=1.0,
        max_grad_norm=None,
        gradient_checkpointing=checkpointing,
        show_progress=False,
    )
    result = Trainer(unet, config, denoising_data(), loss).train()
    grads = {n: before[n] - p.detach() for n, p in unet.named_parameters()}
    return result.losses[0], grads, seen


def test_checkpointing_gives_the_same_loss_and_gradients_and_is_switched_off_after(tiny_unet):
    plain, checkpointed = tiny_unet, copy.deepcopy(tiny_unet)
    loss_plain, grads_plain, seen_plain = train_once(plain, checkpointing=False)
    loss_ckpt, grads_ckpt, seen_ckpt = train_once(checkpointed, checkpointing=True)
    assert seen_plain == [False] and seen_ckpt == [True]  # it really was on while the loss ran
    assert not checkpointed.is_gradient_checkpointing  # the caller's module is left as it was found
    assert loss_ckpt == pytest.approx(loss_plain, abs=1e-6)
    assert max(g.abs().max().item() for g in grads_plain.values()) > 1e-4  # the step moved the weights
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_already_on_is_left_on(tiny_unet):
    unet = tiny_unet
    unet.enable_gradient_checkpointing()
    for wanted in (True, False):
        _, _, seen = train_once(unet, checkpointing=wanted)
        assert seen == [True] and unet.is_gradient_checkpointing


def test_a_module_without_checkpointing_is_refused_before_training():
    model = torch.nn.Linear(4, 1)
    original = copy.deepcopy(model.state_dict())
    loader = DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=2)
    config = TrainerConfig(max_train_steps=1, gradient_checkpointing=True, show_progress=False)
    with pytest.raises(ConfigError, match=r"gradient_checkpointing: Linear does not support gradient checkpointing"):
        Trainer(model, config, loader, lambda m, b: m(b[0]).sum())
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_gradient_checkpointing_must_be_a_bool(value):
    with pytest.raises(ConfigError, match="gradient_checkpointing: invalid value .*accepted values: true, false"):
        TrainerConfig(gradient_checkpointing=value)


def test_a_transformers_model_uses_its_own_switch_and_is_left_as_found():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2
    )
    encoder = CLIPTextModel(config).train()
    ids = torch.randint(0, 20, (4, 6))
    seen: list[bool] = []

    def is_on(model) -> bool:  # transformers 5.2x renamed it (and warns on the old name)
        new = hasattr(type(model), "is_activation_checkpointing")
        return model.is_activation_checkpointing if new else model.is_gradient_checkpointing

    def loss(model, batch):
        seen.append(is_on(model))
        return model(batch[0]).last_hidden_state.pow(2).mean()

    settings = TrainerConfig(max_train_steps=1, gradient_checkpointing=True, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the current spelling is used, not a deprecated one
        Trainer(encoder, settings, DataLoader(TensorDataset(ids), batch_size=4), loss).train()
    assert seen == [True] and not is_on(encoder)
