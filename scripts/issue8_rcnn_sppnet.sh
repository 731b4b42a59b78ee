#!/usr/bin/env bash
# Issue 8 benchmark: R-CNN and SPPNet on shapes, CPU budget (docs/benchmarks.md, "Issue 8").
# 1. the "ImageNet stand-ins" (once): AlexNet pre-trained on shape crops of another seed; R-CNN's
#    with AdamW (its warped crops look like the pre-training crops), SPPNet's with SGD (AdamW
#    leaves most conv5 channels dead, and SPPNet pools conv5 of the whole image);
# 2. rcnn-train experiment=rcnn_alexnet_shapes / sppnet_alexnet_shapes (staged training; the
#    final detector is evaluated on the 200 val images by the regular COCO evaluator);
# 3. rcnn-eval on the saved checkpoint (EVAL=0 skips it).
set -euo pipefail
OUT=${OUT:-outputs/bench/issue8}
MODELS=${MODELS:-"rcnn sppnet"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
declare -A WEIGHTS=([rcnn]=${WEIGHTS_RCNN:-outputs/pretrained/alexnet_shapes.pt}
                    [sppnet]=${WEIGHTS_SPPNET:-outputs/pretrained/alexnet_sgd.pt})
declare -A PRETRAIN=([rcnn]="--iters 600"
                     [sppnet]="--iters 800 --optimizer sgd --lr 0.01 --weight-decay 0.0005 \
                               --context-min 1.2 --context-max 3.0")
for m in $MODELS; do
  w=${WEIGHTS[$m]}
  [ -f "$w" ] || nice -n 10 .venv/bin/python scripts/pretrain_backbone.py --arch alexnet \
    ${PRETRAIN[$m]} --out "$w"
  nice -n 10 .venv/bin/rcnn-train "experiment=${m}_alexnet_shapes" "backbone.weights=$w" \
    proposals.cache_dir="$OUT/proposal_cache" proposals.workers=2 log.period=10 \
    hydra.run.dir="$OUT/$m" "$@"
  if [ "${EVAL:-1}" = 1 ]; then
    nice -n 10 .venv/bin/rcnn-eval ckpt="$OUT/$m/checkpoints/last.pt" hydra.run.dir="$OUT/${m}_eval"
  fi
done
