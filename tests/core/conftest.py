"""Fixtures shared by the tests of ``concept_erase.core``."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel


@pytest.fixture()
def tiny_unet() -> UNet2DConditionModel:
    """A fresh two-block ``UNet2DConditionModel`` (seed 0): 8x8 latents of 4 channels, 8-wide cross-attention."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
