"""Fast CPU kernels for the detector's RoI operators, drop-in for ``torchvision.ops``."""
