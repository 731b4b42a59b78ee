"""R-CNN and SPPNet (2014): detectors that score given regions.

- ``build``: config -> ``RegionDetector`` (``model=rcnn`` / ``model=sppnet``);
- ``warp``, ``cnn``, ``rcnn``: R-CNN's warped region crops and the whole CNN on each (§2.1,
  Appendix A);
- ``spp``, ``sppnet``: SPPNet's pyramid pooling of one conv5 map per image (§2.3, §4);
- ``detector``: the shared scoring, box regression and NMS at test time;
- ``svm``, ``box_ridge``: R-CNN's post-CNN stages, per-class linear SVMs with hard-negative
  mining (§2.3, Appendix B) and class-specific bounding-box ridge regression (Appendix C).

They are trained in stages by ``rcnn_cli.engine.stages.region``.
"""
