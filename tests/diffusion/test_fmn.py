"""Forget-Me-Not and the cross-attention steering utilities, on tiny real diffusers / transformers components."""

from __future__ import annotations

import pytest
import torch

from concept_erase.core.errors import ConfigError, TrainingError
from concept_erase.diffusion.attention import (
    SteeringAttnProcessor,
    concept_positions,
    cross_attention_layers,
    resolve_attention_backend,
    steer_cross_attention,
)
from concept_erase.diffusion.base import ErasureRequest, encode_prompts
from concept_erase.diffusion.erasure import erase, load_erased, read_erasure
from concept_erase.diffusion.methods import fmn
from concept_erase.diffusion.methods.fmn import FMNConfig, concept_attention
from concept_erase.diffusion.tiny_sd import build_pipeline, build_tokenizer, save_pipeline

TEMPLATES = ["the number {}", "a handwritten digit {}", "{}"]
FAST = {"num_images": 3, "generation_steps": 2, "max_train_steps": 8, "show_progress": False}


@pytest.fixture()
def pipe():
    torch.manual_seed(0)
    return build_pipeline()


def _request(pipe, concepts):
    return ErasureRequest(pipe, concepts, "tiny", ["one"], TEMPLATES)


def _inputs(pipe, prompts, concepts, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(len(prompts), 4, 8, 8, generator=generator)
    return latents, encode_prompts(pipe, prompts).states, concept_positions(pipe.tokenizer, prompts, concepts)


def _processor_classes(unet):
    return {name: type(p) for name, p in unet.attn_processors.items()}


# ---------------------------------------------------------------------------------------------------- installation


def test_only_cross_attention_layers_are_steered_and_originals_come_back(pipe):
    unet = pipe.unet
    before = unet.attn_processors
    with steer_cross_attention(unet) as steering:
        during = unet.attn_processors
        assert steering.layers == cross_attention_layers(unet) and len(steering.layers) == 4
        for name, processor in during.items():
            if ".attn2." in name:
                assert isinstance(processor, SteeringAttnProcessor)
            else:
                assert processor is before[name] and type(processor).__name__ == "AttnProcessor2_0"
    after = unet.attn_processors
    assert all(after[name] is before[name] for name in before)
    with pytest.raises(RuntimeError, match="boom"), steer_cross_attention(unet, attention_backend="sdpa"):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[name] is before[name] for name in before)


def test_steering_gives_the_fused_kernels_output_and_records_each_samples_own_tokens(pipe):
    prompts = ["the number seven", "seven written by hand"]
    latents, states, positions = _inputs(pipe, prompts, "seven")
    t = torch.tensor([10, 500])
    with torch.no_grad():
        reference = pipe.unet(latents, t, states).sample
        with steer_cross_attention(pipe.unet, "sdpa") as steering:
            steering.set_positions(positions)
            steered = pipe.unet(latents, t, states).sample
            together = steering.attention_mass()
            alone = []
            for i in range(2):
                steering.set_positions(positions[i : i + 1])
                pipe.unet(latents[i : i + 1], t[i : i + 1], states[i : i + 1])
                alone.append(steering.attention_mass())
            steering.set_positions(torch.ones_like(positions))
            pipe.unet(latents, t, states)
            everything = steering.attention_mass()
    torch.testing.assert_close(steered, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together, torch.cat(alone))
    torch.testing.assert_close(everything, torch.ones(2))  # probabilities over all tokens sum to one


def test_replacing_the_steering_processors_raises_instead_of_a_zero_loss(pipe):
    from diffusers.models.attention_processor import AttnProcessor2_0

    latents, states, positions = _inputs(pipe, ["the number seven"], "seven")
    with steer_cross_attention(pipe.unet) as steering:
        pipe.unet.set_attn_processor(AttnProcessor2_0())  # what enabling xformers does to every layer
        steering.set_positions(positions)
        with pytest.raises(TrainingError, match="replaced"):
            pipe.unet(latents, torch.tensor([10]), states)
    with pytest.raises(TrainingError, match="forward pass"), steer_cross_attention(pipe.unet) as steering:
        steering.loss()


def test_attention_backend_choice():
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(ConfigError, match="accepted values"):
        resolve_attention_backend("flash", "cpu")
    with pytest.raises(ConfigError, match=r"xformers"):  # no package here, or no GPU
        resolve_attention_backend("xformers", "cpu")
    with pytest.raises(ConfigError, match="accepted values"):
        FMNConfig(train="everything")


# ---------------------------------------------------------------------------------------------------- token positions


def test_concept_positions_sd1_tokenizer_pads_with_end_of_text(pipe):
    tokenizer = pipe.tokenizer
    prompts = ["the number nine", "nine and nine"]
    ids = tokenizer(prompts, padding="max_length", max_length=16).input_ids
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and ids[0][-1] == tokenizer.eos_token_id
    plain = concept_positions(tokenizer, prompts, "nine")
    assert plain[0].nonzero().flatten().tolist() == [3, 4, 5]  # "nine" is three BPE tokens
    assert plain[1].sum() == 6  # every occurrence
    with_end = concept_positions(tokenizer, prompts, "nine", include_end_of_text=True)
    assert (with_end & ~plain).nonzero().tolist() == [[0, 6], [1, 8]]  # the prompt's own end-of-text, no padding
    assert all(ids[row][col] == tokenizer.eos_token_id for row, col in [[0, 6], [1, 8]])


def test_concept_positions_can_mark_everything_after_the_concept(pipe):
    tokenizer = pipe.tokenizer
    prompts = ["the number nine", "nine and nine"]
    plain = concept_positions(tokenizer, prompts, "nine")
    following = concept_positions(tokenizer, prompts, "nine", include_following=True)
    assert following[0].nonzero().flatten().tolist() == list(range(3, 16))  # words after it, end-of-text, padding
    assert following[1].nonzero().flatten().tolist() == list(range(1, 16))  # from the first occurrence
    assert not (plain & ~following).any() and not following[:, 0].any()  # never the start token


def test_fmn_steer_following_steers_the_positions_after_the_concept():
    counts = {}
    for follow in (False, True):
        torch.manual_seed(0)
        config = FMNConfig(train="cross_attention_keys", steer_following=follow, **{**FAST, "max_train_steps": 1})
        counts[follow] = fmn.erase(_request(build_pipeline(), ["seven"]), config).details["steered_tokens_per_prompt"]
    # each training prompt adds the positions after "seven": the words that follow, end-of-text, padding to 16
    assert counts[True] > counts[False] + 5, counts


def test_concept_positions_sd2_tokenizer_pads_with_exclamation_mark(tmp_path):
    from transformers import CLIPTokenizer

    build_tokenizer(tmp_path, 16)
    tokenizer = CLIPTokenizer(
        str(tmp_path / "vocab.json"),
        str(tmp_path / "merges.txt"),
        pad_token="!",
        model_max_length=16,
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
    )
    ids = tokenizer(["the number seven"], padding="max_length", max_length=16).input_ids[0]
    assert ids[4] == tokenizer.eos_token_id and ids[5:] == [tokenizer.convert_tokens_to_ids("!")] * 11
    mask = concept_positions(tokenizer, ["the number seven", "seven!"], ["seven", "seven"], include_end_of_text=True)
    assert mask[0].nonzero().flatten().tolist() == [3, 4]
    assert mask[1].nonzero().flatten().tolist() == [1, 3]  # the typed "!" (2) is neither concept nor padding


def test_a_concept_missing_from_a_prompt_is_an_error(pipe):
    with pytest.raises(ConfigError, match=r"'seven'.*'the number three'"):
        concept_positions(pipe.tokenizer, ["the number seven", "the number three"], "seven")


# ---------------------------------------------------------------------------------------------------- the method


def test_fmn_lowers_attention_on_every_concept_and_trains_only_the_keys(pipe):
    prompts = ["the number seven", "a drawing of seven", "the number nine", "nine written by hand"]
    concepts = ["seven", "seven", "nine", "nine"]
    latents, states, positions = _inputs(pipe, prompts, concepts, seed=1)
    before = [concept_attention(pipe.unet, pipe, latents[i::2], states[i::2], positions[i::2]) for i in (0, 1)]
    weights = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    processors = pipe.unet.attn_processors
    config = FMNConfig(train="cross_attention_keys", learning_rate=2e-2, train_batch_size=2, **FAST)
    outcome = fmn.erase(_request(pipe, ["seven", "nine"]), config)
    after = [concept_attention(pipe.unet, pipe, latents[i::2], states[i::2], positions[i::2]) for i in (0, 1)]
    assert after[0] < 0.8 * before[0] and after[1] < 0.8 * before[1], (before, after)
    changed = {n for n, p in pipe.unet.named_parameters() if not torch.equal(p, weights[n])}
    assert changed and all(".attn2.to_k." in n for n in changed)
    assert outcome.details["concept_attention_after"] < outcome.details["concept_attention_before"]
    assert all(pipe.unet.attn_processors[n] is p for n, p in processors.items())  # restored after training


def test_textual_inversion_leaves_the_pipelines_tokenizer_and_text_encoder_alone(pipe):
    vocabulary = len(pipe.tokenizer)
    encoder = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    config = FMNConfig(train="cross_attention", textual_inversion=True, textual_inversion_steps=4, **FAST)
    outcome = fmn.erase(_request(pipe, ["seven"]), config)
    assert outcome.details["textual_inversion"]["tokens"] == ["<fmn-concept-0>"]
    assert len(pipe.tokenizer) == vocabulary
    assert all(torch.equal(p, encoder[n]) for n, p in pipe.text_encoder.named_parameters())


def test_lora_output_loads_back_with_load_erased_and_load_lora_weights(pipe, tmp_path):
    save_pipeline(pipe, tmp_path / "model")
    config = {"train": "lora", "lora_rank": 2, "learning_rate": 1e-2, **FAST}
    record = erase(tmp_path / "model", "fmn", ["seven"], config, output_dir=tmp_path / "out")
    assert record["artifact"]["format"] == "lora" and read_erasure(tmp_path / "out")["method"] == "fmn"
    latents, states, positions = _inputs(pipe, ["the number seven"] * 4, "seven")
    base = concept_attention(pipe.unet, pipe, latents, states, positions)
    erased = load_erased(tmp_path / "out")
    assert concept_attention(erased.unet, erased, latents, states, positions) < base
    fresh = build_pipeline()
    fresh.load_lora_weights(str(tmp_path / "out"))
    assert any("lora" in n for n, _ in fresh.unet.named_parameters())


def test_a_unet_without_cross_attention_is_an_error(pipe):
    from diffusers import UNet2DConditionModel

    pipe.unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=64,
        norm_num_groups=16,
    )
    with pytest.raises(ConfigError, match="no cross-attention layers.*cannot work"):
        fmn.erase(_request(pipe, ["seven"]), FMNConfig(**FAST))
    with pytest.raises(ConfigError, match="no cross-attention layers"), steer_cross_attention(pipe.unet):
        pass


def test_an_empty_concept_list_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="concept list is empty"):
        erase(None, "fmn", [], FAST, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
