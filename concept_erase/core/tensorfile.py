"""Byte-reproducible safetensors files.

``safetensors`` keeps a file's ``__metadata__`` in a Rust ``HashMap``, so the order of its keys in the JSON header
(and with it the file's bytes and sha256) changes from one save to the next. :func:`save_tensors` writes the file
with ``safetensors.torch.save_file`` and then rewrites the header with the metadata keys sorted: identical tensors and
metadata give identical bytes. The file is an ordinary safetensors file (any reader loads it, and files written
before this change load as before).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from concept_erase.core.io import default_mode

__all__ = ["save_tensors", "canonicalise_header", "tensor_digests"]

_METADATA = "__metadata__"
_ALIGN = 8  # safetensors pads the header with spaces to a multiple of 8 bytes


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file(tensors, path, metadata)`` with a deterministic header (metadata keys sorted)
    and the file mode the umask gives (safetensors itself writes 0600)."""
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    canonicalise_header(path)
    path.chmod(default_mode())  # safetensors creates its files 0600; ours get the modes the user's umask gives
    return path


def tensor_digests(module: torch.nn.Module) -> dict[str, str]:
    """``{parameter name: blake2b digest of its bytes}``: tells which parameters changed without holding a second
    copy of the weights (a copy of SD 1.5's UNet is 3.2 GiB; hashing it takes a few seconds)."""
    digests = {}
    for name, param in module.named_parameters():
        data = param.detach().contiguous().cpu()
        digests[name] = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
    return digests


def canonicalise_header(path: str | Path) -> None:
    """Rewrite the header of safetensors file ``path`` with its ``__metadata__`` keys sorted (tensor entries keep the
    writer's order, which is deterministic). In place when the header keeps its length, as it does in practice."""
    path = Path(path)
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        old = fh.read(length)
    header = json.loads(old)
    metadata = header.get(_METADATA)
    if not metadata:
        return
    ordered = {_METADATA: dict(sorted(metadata.items()))}
    ordered.update((k, v) for k, v in header.items() if k != _METADATA)
    new = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    new += b" " * (-len(new) % _ALIGN)
    if new == old:
        return
    if len(new) == length:
        with open(path, "r+b") as fh:
            fh.seek(8)
            fh.write(new)
        return
    tmp = path.with_name(path.name + ".header.tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        src.seek(8 + length)
        dst.write(struct.pack("<Q", len(new)))
        dst.write(new)
        shutil.copyfileobj(src, dst)
    os.replace(tmp, path)
