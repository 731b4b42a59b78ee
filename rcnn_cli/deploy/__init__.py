"""Deployable files: a trained detector as ONNX or TorchScript, run by ONNX Runtime.

``graph`` (what is exported), ``traceable`` (export-friendly parts, same numbers), ``onnx`` and
``torchscript`` (the two writers), ``sidecar`` (model.json), ``export`` (``rcnn-export``'s
work), ``onnx_runtime`` (an exported file as a detector for rcnn-predict / rcnn-eval).
"""
