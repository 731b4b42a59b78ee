#!/usr/bin/env bash
# Issue 6 benchmark: proposal recall of a trained RPN (default recipe: Faster R-CNN,
# ResNet-18 FPN from scratch, AdamW) on the same 200 shapes val images as
# issue6_fast_rcnn_ss.sh, for the side-by-side AR@100/300/1000 table.
set -euo pipefail
OUT=${1:-outputs/bench/issue6_rpn}
MAX_ITER=${MAX_ITER:-600}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
nice -n 10 .venv/bin/rcnn-train dataset.train_size=1000 dataset.val_size=200 \
  schedule.max_iter="$MAX_ITER" schedule.batch_size=4 schedule.eval_period=0 \
  log.period=100 log.tensorboard=false hydra.run.dir="$OUT"
nice -n 10 .venv/bin/rcnn-eval ckpt="$OUT/checkpoints/last.pt" eval.proposals=true \
  eval.proposal_counts=[100,300,1000] hydra.run.dir="$OUT/eval_proposals"
