"""rcnn-cli: config-driven training and evaluation for the R-CNN family."""

__version__ = "0.1.0"
