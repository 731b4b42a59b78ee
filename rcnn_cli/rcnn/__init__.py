"""R-CNN's (2014) post-CNN stages: the on-disk feature cache, per-class linear SVMs with
hard-negative mining, and class-specific bounding-box ridge regression."""
