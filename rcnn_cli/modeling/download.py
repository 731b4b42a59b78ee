"""torchvision weights by name: the file in torch's cache, downloaded once.

Offline, a missing file is one error naming the config key, the file name torchvision expects
and the folder to copy it into (``torch.hub.get_dir()/checkpoints``), not a ``URLError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from rcnn_cli.errors import ConfigError


def cache_path(weights) -> Path:
    """Where torch.hub keeps the file of a torchvision weights enum."""
    name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch_weights(weights, key: str) -> Path:
    """The cached file of ``weights`` (a torchvision ``WeightsEnum``), downloading it if absent."""
    path = cache_path(weights)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    found = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(weights.url, str(path),
                                       found.group(1) if found else None, progress=True)
    except (URLError, OSError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(
            f"{key}={weights}: cannot download {weights.url} ({reason}); offline, copy the "
            f"file {path.name} into {path.parent} or set {key} to a local file") from None
    return path
