#!/usr/bin/env bash
# Issue 8 benchmark: R-CNN and SPPNet on shapes, CPU budget (docs/benchmarks.md, "Issue 8").
# 1. the "ImageNet stand-in": AlexNet pre-trained on shape crops of another seed (once);
# 2. rcnn-train experiment=rcnn_alexnet_shapes / sppnet_alexnet_shapes (staged training; the
#    final detector is evaluated on the 200 val images by the regular COCO evaluator);
# 3. rcnn-eval on the saved checkpoint (EVAL=0 skips it).
set -euo pipefail
OUT=${OUT:-outputs/bench/issue8}
MODELS=${MODELS:-"rcnn sppnet"}
WEIGHTS=${WEIGHTS:-outputs/pretrained/alexnet_shapes.pt}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ ! -f "$WEIGHTS" ]; then
  nice -n 10 .venv/bin/python scripts/pretrain_backbone.py --arch alexnet --iters 600 \
    --out "$WEIGHTS"
fi
for m in $MODELS; do
  nice -n 10 .venv/bin/rcnn-train "experiment=${m}_alexnet_shapes" "backbone.weights=$WEIGHTS" \
    proposals.cache_dir="$OUT/proposal_cache" proposals.workers=2 log.period=10 \
    hydra.run.dir="$OUT/$m" "$@"
  if [ "${EVAL:-1}" = 1 ]; then
    nice -n 10 .venv/bin/rcnn-eval ckpt="$OUT/$m/checkpoints/last.pt" hydra.run.dir="$OUT/${m}_eval"
  fi
done
