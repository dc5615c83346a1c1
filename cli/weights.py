"""``--path_t`` beyond this project's checkpoints: torchvision's published weights, by file or by name.

``--path_t torchvision:ResNet34_Weights.IMAGENET1K_V1`` resolves through torchvision's weights API to its
file in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded there with torch.hub's hash check when
missing; a plain state_dict file such as torchvision's ``resnet34-b627a593.pth`` loads like a checkpoint.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import torch

from helper.checkpoint import CheckpointError

TORCHVISION_PREFIX = "torchvision:"
# torchvision's file names for the ImageNet ResNets: resnet34-b627a593.pth (name, then a hash prefix)
_TORCHVISION_FILE = re.compile(r"^resnet(18|34|50)-[0-9a-f]+\.pth$")


def torchvision_arch(path_t: str) -> str | None:
    """The zoo name of a torchvision teacher: 'torchvision:ResNet34_Weights.IMAGENET1K_V1' or a file named
    'resnet34-b627a593.pth' -> 'ResNet34'; None for anything else."""
    if path_t.startswith(TORCHVISION_PREFIX):
        enum = path_t[len(TORCHVISION_PREFIX):].split(".")[0]
        return enum[:-len("_Weights")] if enum.endswith("_Weights") else None
    match = _TORCHVISION_FILE.match(Path(path_t).name)
    return f"ResNet{match.group(1)}" if match else None


def resolve_teacher_path(path_t: str) -> str:
    """A local file for ``--path_t``: itself, or for 'torchvision:<Weights>.<NAME>' the cached (downloaded when
    missing) file of those weights."""
    if not path_t.startswith(TORCHVISION_PREFIX):
        return path_t
    from torchvision.models import get_weight

    spec = path_t[len(TORCHVISION_PREFIX):]
    try:
        weights = get_weight(spec)
    except (KeyError, ValueError, AttributeError) as e:
        raise CheckpointError(f"--path_t {path_t}: torchvision has no weights {spec!r} ({type(e).__name__}: {e}); "
                              f"use e.g. torchvision:ResNet34_Weights.IMAGENET1K_V1") from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not file.is_file():
        hash_prefix = torch.hub.HASH_REGEX.search(file.name)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(file), hash_prefix.group(1) if hash_prefix else None)
        except Exception as e:  # urllib, ssl, socket and hash errors all mean "could not fetch"
            raise CheckpointError(f"--path_t {path_t}: cannot download {weights.url} ({type(e).__name__}: {e}); "
                                  f"fetch it on a machine with network into {file} (torch's hub cache, "
                                  f"$TORCH_HOME/hub/checkpoints) or pass the file as --path_t") from None
    return str(file)
