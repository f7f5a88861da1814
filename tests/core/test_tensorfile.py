"""core.tensorfile: parameter digests."""

import torch

from concept_erase.core.tensorfile import tensor_digests


def test_tensor_digests_tell_which_parameters_changed_in_any_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        module = torch.nn.Linear(3, 2).to(dtype)
        before = tensor_digests(module)
        with torch.no_grad():
            module.weight[0, 0] += 1
        after = tensor_digests(module)
        assert set(before) == {"weight", "bias"}
        assert after["weight"] != before["weight"] and after["bias"] == before["bias"]
