"""Every supported family and prediction type in fmn, salun and esd; every other pipeline class refused.

A tiny random ``StableDiffusionXLPipeline`` is built here from the real classes (a ``text_time`` UNet, a
``CLIPTextModel`` and a ``CLIPTextModelWithProjection``, two CLIP tokenizers of the tiny SD's vocabulary, the second
padding with ``"!"`` as SDXL's does) and a v-prediction variant of the tiny SD; each method erases "seven" from both
end to end in one or two steps, and the artifacts load back with the pipeline class's own loaders.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from concept_erase.core.errors import AdapterError, ConfigError, ModelLoadError
from concept_erase.diffusion.attention import concept_positions, pipeline_concept_positions
from concept_erase.diffusion.base import (
    ConceptData,
    ConceptDataset,
    ErasureRequest,
    encode_prompts,
    noise_scheduler,
    unet_prediction,
)
from concept_erase.diffusion.erasure import erase, load_erased, read_erasure
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure
from concept_erase.diffusion.families import PromptEmbeddings, family_of, training_target, unet_kwargs
from concept_erase.diffusion.loading import apply_adapter, check_concept_tokens, load_pipeline, save_weights_adapter
from concept_erase.diffusion.methods.esd import ESDConfig
from concept_erase.diffusion.methods.salun import SalUnConfig, _denoising_loss, _salun_loss
from concept_erase.diffusion.tiny_sd import TinySDConfig, build_pipeline, build_tokenizer, save_pipeline

# diffusers' EulerDiscreteScheduler (SDXL's own) builds its sigmas with np.array(tensor), which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
MAX_LENGTH = 16
TEMPLATES = ["the number {}", "a drawing of the digit {}"]
FAST = {
    "num_images": 1,
    "generation_steps": 2,
    "max_train_steps": 1,
    "train_batch_size": 1,
    "templates": TEMPLATES,
    "retain_concepts": ["two"],
    "show_progress": False,
}
SETTINGS = {
    "fmn": {"train": "lora", "lora_rank": 2, "learning_rate": 1e-2},  # a diffusers LoRA
    "salun": {"learning_rate": 1e-3, "output_format": "pipeline"},  # a full pipeline
    "esd": {"train": "xattn", "learning_rate": 1e-3, "preserve_weight": 1.0},  # a weights adapter
}
SUPPORTED = "StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline (SDXL)"
ONLY = f"concept erasure supports {SUPPORTED}"


def _text_encoder(cls, tokenizer, hidden: int):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return cls(config).eval()


def build_sdxl(work_dir) -> StableDiffusionXLPipeline:
    """A tiny random SDXL pipeline at 8x8 px (latent 8x8, one VAE block), every component a real class."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(work_dir, MAX_LENGTH)
    special = {"unk_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    files = (str(work_dir / "vocab.json"), str(work_dir / "merges.txt"))
    tokenizer_2 = CLIPTokenizer(*files, pad_token="!", model_max_length=MAX_LENGTH, **special)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32 + 48,  # both encoders' states, concatenated
        attention_head_dim=8,
        norm_num_groups=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=48 + 6 * 8,  # pooled embedding + six time ids
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(32,),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=_text_encoder(CLIPTextModel, tokenizer, 32),
        text_encoder_2=_text_encoder(CLIPTextModelWithProjection, tokenizer_2, 48),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear"),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_v_prediction(work_dir=None):
    """The tiny SD's architecture (random weights) with a v-prediction scheduler, as SD 2.x 768 ships."""
    torch.manual_seed(0)
    pipe = build_pipeline(work_dir=work_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    return pipe


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    build_sdxl(root / "tokenizer-files").save_pretrained(str(root / "model"), safe_serialization=True)
    return root / "model"


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return load_pipeline(sdxl_dir)


@pytest.fixture(scope="module")
def vpred_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vpred")
    save_pipeline(build_v_prediction(root), root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    save_pipeline(build_pipeline(work_dir=root), root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def sdxl_erasures(sdxl_dir, tmp_path_factory):
    """fmn, salun and esd on the tiny SDXL, one output directory each."""
    root = tmp_path_factory.mktemp("sdxl-erasures")
    for method, settings in SETTINGS.items():
        erase(sdxl_dir, method, ["seven"], {**FAST, **settings}, output_dir=root / method)
    return root


# ---------------------------------------------------------------------------------------------------- SDXL


def test_sdxl_loads_as_its_own_class_and_conditions_its_unet_as_the_pipeline_does(sdxl):
    """encode + unet_kwargs give the UNet exactly what the pipeline's own __call__ gives it (no guidance)."""
    assert isinstance(sdxl, StableDiffusionXLPipeline) and family_of(sdxl).name == "sdxl"
    seen = {}

    def grab(module, args, kwargs):
        seen.update(states=args[2] if len(args) > 2 else kwargs["encoder_hidden_states"], **kwargs)

    hook = sdxl.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        sdxl("the number seven", num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    finally:
        hook.remove()
    text = encode_prompts(sdxl, ["the number seven"])
    ours = unet_kwargs(sdxl, text.pooled, 1)["added_cond_kwargs"]
    assert torch.equal(ours["time_ids"], torch.tensor([[8.0, 8.0, 0.0, 0.0, 8.0, 8.0]]))
    assert torch.equal(ours["time_ids"], seen["added_cond_kwargs"]["time_ids"])
    assert torch.allclose(ours["text_embeds"], seen["added_cond_kwargs"]["text_embeds"])
    assert torch.allclose(text.states, seen["states"]) and text.states.shape == (1, MAX_LENGTH, 80)


def test_sdxl_unet_without_pooled_embeddings_is_refused(sdxl):
    with pytest.raises(ConfigError, match="needs pooled text embeddings for each of the 2 samples, got none"):
        unet_kwargs(sdxl, None, 2)


def test_sdxl_concept_positions_are_found_in_both_tokenizers(sdxl):
    """tokenizer pads with end-of-text, tokenizer_2 with "!": the union marks the concept and the prompt's own
    end-of-text once, never padding."""
    prompts = ["the number seven", "seven written by hand"]
    first = concept_positions(sdxl.tokenizer, prompts, "seven", include_end_of_text=True)
    second = concept_positions(sdxl.tokenizer_2, prompts, "seven", include_end_of_text=True)
    united = pipeline_concept_positions(sdxl, prompts, "seven", include_end_of_text=True)
    assert sdxl.tokenizer_2.pad_token == "!" and sdxl.tokenizer.pad_token != "!"
    assert torch.equal(united, first | second) and united.sum(1).tolist() == [2, 2]
    assert check_concept_tokens(sdxl, "seven").keys() == {"tokenizer", "tokenizer_2"}


def test_evaluate_checks_concepts_against_sdxls_second_tokenizer_too(sdxl_dir, tmp_path):
    """A concept that fits the first tokenizer's context but not tokenizer_2's is refused naming tokenizer_2,
    before any image is generated (with no output directory written)."""
    model = tmp_path / "model"
    shutil.copytree(sdxl_dir, model)
    config_file = model / "tokenizer_2" / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_max_length": 4}))
    concept = "seven seven seven"  # three tokens: the first tokenizer holds 14, tokenizer_2 now 2
    with pytest.raises(ConfigError, match=r"is 3 tokens long; the tokenizer_2's context holds 2"):
        evaluate_erasure(
            model, EvaluationConfig(forget=[concept], num_images=1), oracle=None, output_dir=tmp_path / "e"
        )
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("method", list(SETTINGS))
def test_each_method_erases_sdxl_and_records_the_pipeline_class(sdxl_erasures, method):
    record = read_erasure(sdxl_erasures / method)
    assert record["steps"] == 1 and record["trained_parameters"] and record["loss_first"] > 0
    assert record["changed_parameters"] or method == "fmn"  # a LoRA leaves the base weights as they are
    assert isinstance(load_erased(sdxl_erasures / method), StableDiffusionXLPipeline)


def test_sdxl_artifacts_load_back_with_sdxls_own_loaders(sdxl_erasures, sdxl_dir, sdxl):
    """The LoRA through load_lora_weights, the full pipeline through from_pretrained; each changes the UNet."""
    formats = {m: read_erasure(sdxl_erasures / m)["artifact"]["format"] for m in SETTINGS}
    assert formats == {"fmn": "lora", "salun": "pipeline", "esd": "weights"}
    with_lora = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), use_safetensors=True)
    with_lora.load_lora_weights(str(sdxl_erasures / "fmn"))
    assert any("lora" in name for name, _ in with_lora.unet.named_parameters())
    full = StableDiffusionXLPipeline.from_pretrained(str(sdxl_erasures / "salun"), use_safetensors=True)
    changed = read_erasure(sdxl_erasures / "salun")["changed_parameters"][0]
    assert not torch.equal(full.unet.get_parameter(changed), sdxl.unet.get_parameter(changed))
    esd = load_erased(sdxl_erasures / "esd")
    changed = read_erasure(sdxl_erasures / "esd")["changed_parameters"][0]
    assert ".attn2." in changed and not torch.equal(esd.unet.get_parameter(changed), sdxl.unet.get_parameter(changed))


def test_gradient_checkpointing_reaches_the_trainer_and_trains_sdxl(sdxl_dir, tmp_path):
    assert ESDConfig(gradient_checkpointing=True).trainer_config().gradient_checkpointing is True
    assert ESDConfig().trainer_config().gradient_checkpointing is False
    settings = {**FAST, **SETTINGS["esd"], "gradient_checkpointing": True}
    record = erase(sdxl_dir, "esd", ["seven"], settings, output_dir=tmp_path / "out")
    assert record["config"]["gradient_checkpointing"] is True and record["changed_parameters"]


def test_salun_on_the_toolkits_own_tiny_sdxl_v_prediction_recipe(tmp_path):
    """The tiny-SD recipe's SDXL family with a v-prediction scheduler (and the empty prompt's encoding as its
    unconditional input, force_zeros_for_empty_prompt false) erases end to end."""
    save_pipeline(build_pipeline(TinySDConfig(family="sdxl", prediction_type="v_prediction"), tmp_path), tmp_path / "m")
    record = erase(tmp_path / "m", "salun", ["seven"], {**FAST, **SETTINGS["salun"]}, output_dir=tmp_path / "out")
    erased = load_erased(tmp_path / "out")
    assert isinstance(erased, StableDiffusionXLPipeline) and erased.scheduler.config.prediction_type == "v_prediction"
    assert record["changed_parameters"]


def test_fmn_textual_inversion_on_sdxl_is_refused_before_any_work(sdxl_dir, tmp_path):
    with pytest.raises(ConfigError) as info:
        erase(sdxl_dir, "fmn", ["seven"], {**FAST, "textual_inversion": True}, output_dir=tmp_path / "out")
    assert "textual_inversion is not implemented for SDXL" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- prediction types


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_the_schedulers_own(kind):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    steps = torch.tensor([10, 900])
    expected = {"epsilon": noise, "v_prediction": scheduler.get_velocity(latents, noise, steps), "sample": latents}
    assert torch.equal(training_target(scheduler, latents, noise, steps), expected[kind])


def test_an_unknown_prediction_type_is_refused_naming_it():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(ConfigError, match="prediction_type 'flow'; accepted values: epsilon, v_prediction, sample"):
        training_target(scheduler, torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_salun_loss_regresses_onto_the_velocity_of_a_v_prediction_model(tmp_path):
    """For a fixed seed SalUn's saliency loss equals the MSE to DDPMScheduler.get_velocity (not to the noise)."""
    pipe = build_v_prediction(tmp_path)
    scheduler = noise_scheduler(pipe)
    assert isinstance(scheduler, DDPMScheduler) and scheduler.config.prediction_type == "v_prediction"
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    text = encode_prompts(pipe, ["the number seven", "the number two"])
    batch = ConceptDataset(latents, text)[:]
    loss = _denoising_loss(pipe, scheduler, torch.Generator().manual_seed(7))(pipe.unet, batch)
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=generator)
    steps = torch.randint(0, 1000, (2,), generator=generator)
    with torch.no_grad():
        pred = unet_prediction(pipe.unet, pipe, scheduler.add_noise(latents, noise, steps), steps, text)
    velocity = DDPMScheduler.from_config(pipe.scheduler.config).get_velocity(latents, noise, steps)
    assert torch.allclose(loss, F.mse_loss(pred, velocity))
    assert not torch.allclose(loss, F.mse_loss(pred, noise))


def test_salun_retain_term_regresses_onto_the_velocity_of_a_v_prediction_model(tmp_path):
    """The retain term (the loss at alpha=1 minus the loss at alpha=0, same seed) is the MSE of the retain rows'
    predictions to their velocity."""
    pipe = build_v_prediction(tmp_path)
    request = ErasureRequest(pipe, ["seven"], "tiny", ["two"], TEMPLATES)
    text = encode_prompts(pipe, ["the number seven", "the number two", "a drawing of the digit two"])
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    retain = ConceptData(["r0", "r1"], torch.zeros(2, dtype=torch.long), latents[1:], text.states[1:])
    batch = ConceptDataset(latents[:1], text.take(slice(0, 1)), template_ids=torch.zeros(1, dtype=torch.long))[:]

    def loss(alpha):
        torch.manual_seed(16)  # the retain row is noised at t = 958, where v and noise differ most
        config = SalUnConfig(alpha=alpha, retain_concepts=["two"], show_progress=False)
        return _salun_loss(request, config, retain, text.take(slice(1, 2)))(pipe.unet, batch)

    with torch.no_grad():
        retain_term = loss(1.0) - loss(0.0)
        torch.manual_seed(16)
        picks = torch.randint(0, 2, (1,))
        torch.randint(0, 1, (1,))  # the misaligned prompt's draw
        clean = torch.cat([latents[:1], retain.latents[picks]])
        noise, steps = torch.randn_like(clean), torch.randint(0, 1000, (2,))
        scheduler = noise_scheduler(pipe)
        both = PromptEmbeddings.cat([text.take(slice(0, 1)), retain.text.take(picks)])
        pred = unet_prediction(pipe.unet, pipe, scheduler.add_noise(clean, noise, steps), steps, both)
    velocity = scheduler.get_velocity(clean, noise, steps)
    assert torch.allclose(retain_term, F.mse_loss(pred[1:], velocity[1:]), atol=1e-6)
    assert not torch.allclose(retain_term, F.mse_loss(pred[1:], noise[1:]), atol=1e-3)


@pytest.mark.parametrize("method", list(SETTINGS))
def test_each_method_runs_on_a_v_prediction_model(vpred_dir, tmp_path, method):
    record = erase(vpred_dir, method, ["seven"], {**FAST, **SETTINGS[method]}, output_dir=tmp_path / "out")
    assert record["steps"] == 1 and record["trained_parameters"] and record["loss_first"] > 0
    assert load_erased(tmp_path / "out").scheduler.config.prediction_type == "v_prediction"


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("class_name", ["FluxPipeline", "StableDiffusion3Pipeline", "StableDiffusionImg2ImgPipeline"])
def test_an_unsupported_pipeline_class_is_refused_before_any_weights_are_loaded(tmp_path, class_name):
    """A directory with only a model_index.json: refused on its class, not on its missing components."""
    (tmp_path / "model").mkdir()
    index = {"_class_name": class_name, "_diffusers_version": "0.42.1", "transformer": ["diffusers", "X"]}
    (tmp_path / "model" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(tmp_path / "model")
    message = str(info.value)
    assert f"is a {class_name}; {ONLY}" in message and "\n" not in message
    with pytest.raises(ModelLoadError, match=class_name):
        erase(tmp_path / "model", "esd", ["seven"], FAST, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_an_unsupported_pipeline_in_one_line_before_printing_anything(tmp_path, capsys):
    from pipelines.cli import main

    (tmp_path / "model").mkdir()
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (tmp_path / "model" / "model_index.json").write_text(json.dumps(index))
    code = main(
        [
            "erase",
            "--method",
            "esd",
            "--concept",
            "van gogh",
            "--model",
            str(tmp_path / "model"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not (tmp_path / "out").exists()
    assert captured.err.strip().count("\n") == 0 and f"is a FluxPipeline; {ONLY}" in captured.err


def test_a_model_index_without_a_class_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ModelLoadError, match=r"names no pipeline class \(_class_name\); concept erasure supports"):
        load_pipeline(tmp_path / "model")


def test_an_unsupported_loaded_pipeline_is_refused_by_the_request(tmp_path):
    sd = build_pipeline(work_dir=tmp_path)
    img2img = StableDiffusionImg2ImgPipeline(**sd.components, requires_safety_checker=False)
    with pytest.raises(ModelLoadError, match=re.escape(f"the pipeline is a StableDiffusionImg2ImgPipeline; {ONLY}")):
        ErasureRequest(img2img, ["seven"], "tiny", ["two"], TEMPLATES)


def test_an_sdxl_adapter_on_an_sd_model_is_refused_naming_both_families(sdxl_erasures, sd_dir):
    sd = load_pipeline(sd_dir)
    for method in ("esd", "fmn"):  # a weights adapter and a LoRA
        with pytest.raises(AdapterError) as info:
            apply_adapter(sd, sdxl_erasures / method)
        message = str(info.value)
        assert "was made for a StableDiffusionXLPipeline (SDXL) model" in message and "\n" not in message
        assert "the model is a StableDiffusionPipeline (SD 1.x/2.x)" in message


def test_an_sd_adapter_on_an_sdxl_model_is_refused_naming_both_families(sd_dir, sdxl_dir, tmp_path):
    erase(sd_dir, "esd", ["seven"], {**FAST, **SETTINGS["esd"]}, output_dir=tmp_path / "sd-esd")
    sdxl = load_pipeline(sdxl_dir)
    before = {n: p.clone() for n, p in sdxl.unet.named_parameters()}
    with pytest.raises(AdapterError, match=r"made for a StableDiffusionPipeline \(SD 1.x/2.x\) model, but the model"):
        apply_adapter(sdxl, tmp_path / "sd-esd")
    assert all(torch.equal(p, before[n]) for n, p in sdxl.unet.named_parameters())


def test_an_adapter_without_a_recorded_class_names_the_model_class_when_it_does_not_fit(sdxl, tmp_path):
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    save_weights_adapter(tmp_path / "a.safetensors", {key: torch.zeros(32, 768)})
    with pytest.raises(AdapterError, match=r"adapter does not match the model \(a StableDiffusionXLPipeline\)"):
        apply_adapter(sdxl, tmp_path / "a.safetensors")


def test_prompt_embeddings_keep_pooled_rows_with_their_states():
    text = PromptEmbeddings(torch.arange(6.0).view(3, 2, 1), torch.arange(3.0).view(3, 1))
    joined = PromptEmbeddings.cat([text.take(torch.tensor([2, 0])), text.take(slice(1, 2)).expand(2)])
    assert joined.states[:, 0, 0].tolist() == [4.0, 0.0, 2.0, 2.0] and joined.pooled[:, 0].tolist() == [2, 0, 1, 1]
    assert PromptEmbeddings.cat([PromptEmbeddings(text.states), PromptEmbeddings(text.states)]).pooled is None
