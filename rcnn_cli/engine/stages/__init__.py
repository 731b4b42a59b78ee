"""Staged training: a run as a graph of keyed, resumable stages over the one ``Trainer`` loop.

- ``graph``: the ``Stage`` record, ``run_graph`` (reuse, continue or re-run each stage), the
  one key policy (``RUN_ONLY``) and the program preamble / final network (``train_graph``);
- ``store``: a stage's directory and manifest (key, status, output hashes);
- ``alternating``: Faster R-CNN 4-step training (``schedule=alternating``, docs/alternating.md);
- ``region``: R-CNN / SPPNet fine-tuning, features, SVMs, box regression (docs/rcnn.md);
- ``feature_store``: the memory-mapped fc7 / pool5 cache of the ``features`` stage.
"""
