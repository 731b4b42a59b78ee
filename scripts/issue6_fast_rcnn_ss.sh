#!/usr/bin/env bash
# Issue 6 benchmark: Fast R-CNN (r18_fpn, 256-d fc6/fc7) on selective-search proposals, shapes.
# Budget: 500 train images (128 px), 1500 iterations x 2 images x 64 RoIs, AdamW, CPU.
set -euo pipefail
OUT=${1:-outputs/bench/issue6_fast_ss}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
nice -n 10 .venv/bin/rcnn-train model=fast proposals=selective_search sampler=paper \
  proposals.cache_dir=outputs/proposal_cache proposals.workers=2 \
  dataset.train_size=500 dataset.val_size=100 \
  schedule.max_iter=1500 schedule.batch_size=2 schedule.warmup_iters=100 \
  schedule.optimizer=adamw schedule.lr=1e-3 schedule.weight_decay=0.05 \
  schedule.eval_period=500 schedule.checkpoint_period=500 log.period=50 \
  hydra.run.dir="$OUT"
