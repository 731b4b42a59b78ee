#!/usr/bin/env bash
# Issue 6 benchmark: Fast R-CNN on selective-search proposals, shapes, CPU.
# Budget: ResNet-18 FPN from scratch, or from WEIGHTS (e.g. outputs/pretrained/resnet18_shapes.pt
# made by scripts/pretrain_backbone.py, the ImageNet stand-in), 1024-d fc6/fc7, 1000 train images (128 px),
# MAX_ITER iterations x 2 images x 64 RoIs (sampler=fast_rcnn), AdamW; selective search "fast",
# 2000 boxes/image max, cached in outputs/proposal_cache. Then proposal recall of selective
# search on the 200 val images (AR@100/300/1000).
set -euo pipefail
OUT=${1:-outputs/bench/issue6_fast_ss}
MAX_ITER=${MAX_ITER:-500}
LR=${LR:-2e-3}
WEIGHTS=${WEIGHTS:-null}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
nice -n 10 .venv/bin/rcnn-train model=fast proposals=selective_search sampler=fast_rcnn \
  proposals.cache_dir=outputs/proposal_cache proposals.workers=2 \
  model.box_head.representation_size=1024 backbone.weights="$WEIGHTS" \
  dataset.train_size=1000 dataset.val_size=200 \
  schedule.max_iter="$MAX_ITER" schedule.batch_size=2 schedule.warmup_iters=100 \
  schedule.lr="$LR" schedule.eval_period=0 schedule.checkpoint_period="$MAX_ITER" log.period=100 \
  log.tensorboard=false hydra.run.dir="$OUT"
# Recall of the cached selective-search proposals on the same val split (no model needed;
# `rcnn-eval ckpt=$OUT/checkpoints/last.pt eval.proposals=true` reports the same keys).
nice -n 10 .venv/bin/python benchmarks/selective_search_recall.py proposals.cache_dir=outputs/proposal_cache \
  dataset.train_size=1000 dataset.val_size=200 | tee "$OUT/ss_recall.json"
