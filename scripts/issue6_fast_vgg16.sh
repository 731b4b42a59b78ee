#!/usr/bin/env bash
# Issue 6 benchmark: Fast R-CNN with the paper's VGG16 head (fc6 7x7x512 -> 4096, fc7 4096 ->
# 4096, both initialised from the pre-trained classifier as in Fast R-CNN §2.2; conv3_1 and up
# fine-tuned; RoI max pooling 7x7) on selective-search proposals, shapes, CPU; then truncated SVD
# at the paper's fc6 t=1024 / fc7 t=256 (§3.1) on the trained model.
# VGG16 with BatchNorm (torchvision's vgg16_bn, backbone.norm=bn): plain VGG16 does not learn
# from scratch in our pre-training budget. WEIGHTS: its classifier state dict, from
#   python scripts/pretrain_backbone.py --arch vgg16_bn --iters 250 --batch-size 32 --lr 1e-3 \
#       --out outputs/pretrained/vgg16_bn_shapes.pt
set -euo pipefail
OUT=${1:-outputs/bench/issue6_fast_vgg16}
MAX_ITER=${MAX_ITER:-400}
WEIGHTS=${WEIGHTS:-outputs/pretrained/vgg16_bn_shapes.pt}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
nice -n 5 .venv/bin/rcnn-train model=fast proposals=selective_search sampler=fast_rcnn \
  backbone=vgg16 backbone.norm=bn backbone.weights="$WEIGHTS" backbone.trainable_layers=3 pooler=roi_pool \
  model.box_head.representation_size=4096 model.fast_rcnn.fc_init=backbone \
  proposals.cache_dir=outputs/proposal_cache proposals.workers=2 \
  dataset.train_size=1000 dataset.val_size=200 \
  schedule.max_iter="$MAX_ITER" schedule.batch_size=2 schedule.warmup_iters=50 \
  schedule.lr="${LR:-1e-4}" schedule.eval_period=0 schedule.checkpoint_period="$MAX_ITER" \
  log.period=50 log.tensorboard=false hydra.run.dir="$OUT"
nice -n 5 .venv/bin/rcnn-eval ckpt="$OUT/checkpoints/last.pt" dataset=shapes \
  dataset.train_size=1000 dataset.val_size=200 compress.fc6=1024 compress.fc7=256 \
  compress.save=true hydra.run.dir="$OUT/svd_1024_256"
