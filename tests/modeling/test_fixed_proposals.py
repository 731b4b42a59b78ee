"""FixedProposals: the stored boxes, rescaled to the network input, and no loss."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.fixed_proposals import FixedProposals


def test_proposals_are_rescaled_to_the_resized_image():
    images = ImageList(torch.zeros(2, 3, 128, 200), [(128, 192), (100, 200)])
    features = {"0": torch.zeros(2, 8, 32, 50)}
    targets = [{"proposals": torch.tensor([[10.0, 20.0, 30.0, 40.0]]),
                "proposals_size": torch.tensor([64, 96])},
               {"proposals": torch.zeros(0, 4), "proposals_size": torch.tensor([50, 100])}]
    proposals, losses = FixedProposals()(images, features, targets)
    assert losses == {}
    assert torch.allclose(proposals[0], torch.tensor([[20.0, 40.0, 60.0, 80.0]]))
    assert proposals[1].shape == (0, 4)


def test_inference_without_proposals_is_a_clear_error():
    images = ImageList(torch.zeros(1, 3, 8, 8), [(8, 8)])
    with pytest.raises(ConfigError, match="needs targets carrying 'proposals'"):
        FixedProposals()(images, {"0": torch.zeros(1, 1, 2, 2)}, None)
