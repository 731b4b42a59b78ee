#!/usr/bin/env bash
# Issue 6 benchmark: truncated SVD (Fast R-CNN §3.1) of the trained Fast R-CNN of
# issue6_fast_rcnn_ss.sh (fc6 6272->1024, fc7 1024->1024) on 100 shapes val images with up to
# 2000 selective-search RoIs each: AP and RoI-head time before/after. Default ranks are the
# paper's ratios for this width (fc6 t = 1/4, fc7 t = 1/16: 256 / 64).
set -euo pipefail
RUN=${1:-outputs/bench/issue6_fast_ss}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for ranks in ${RANKS:-256/64}; do
  fc6=${ranks%/*} fc7=${ranks#*/}
  nice -n 10 .venv/bin/rcnn-eval ckpt="$RUN/checkpoints/last.pt" dataset=shapes \
    dataset.train_size=1000 dataset.val_size=100 compress.fc6="$fc6" compress.fc7="$fc7" \
    compress.save=true hydra.run.dir="$RUN/svd_${fc6}_${fc7}"
done
