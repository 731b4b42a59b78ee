#!/usr/bin/env bash
# Issue 6 benchmark: truncated SVD (Fast R-CNN §3.1) at the paper's setting, the VGG16 head
# (fc6 25088 -> 4096 kept to t = 1024, fc7 4096 -> 4096 kept to t = 256).
# 1. the "ImageNet stand-in": vgg16_bn trained on shape crops (another seed), once;
# 2. Fast R-CNN on selective search: backbone=vgg16 (norm=bn) from the stand-in, conv3_1 and up
#    trained (the paper's choice), fc6/fc7 from the stand-in's classifier (fc_init=backbone),
#    RoI max pooling 7x7, 2 images x 64 RoIs, SGD; 1000 train / 200 val images of 128 px;
# 3. rcnn-eval with compress.fc6/fc7 on 100 val images: AP and RoI-head time before/after.
set -euo pipefail
OUT=${OUT:-outputs/bench/issue6_vgg16}
WEIGHTS=${WEIGHTS:-outputs/pretrained/vgg16_bn_sgd.pt}
MAX_ITER=${MAX_ITER:-300}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ ! -f "$WEIGHTS" ]; then
  .venv/bin/python scripts/pretrain_backbone.py --arch vgg16_bn --iters 500 --batch-size 32 \
    --crop-size 48 --optimizer sgd --lr 0.01 --weight-decay 0.0005 --context-min 1.2 \
    --context-max 3.0 --out "$WEIGHTS"
fi
if [ "${TRAIN:-1}" = 1 ]; then
  .venv/bin/rcnn-train model=fast backbone=vgg16 backbone.norm=bn backbone.weights="$WEIGHTS" \
    backbone.trainable_layers=3 model.box_head.representation_size=4096 \
    model.fast_rcnn.fc_init=backbone pooler=roi_pool proposals=selective_search sampler=fast_rcnn \
    proposals.cache_dir=outputs/proposal_cache proposals.workers=2 \
    dataset.train_size=1000 dataset.val_size=200 schedule.optimizer=sgd schedule.lr=0.01 \
    schedule.momentum=0.9 schedule.weight_decay=0.0005 schedule.max_iter="$MAX_ITER" \
    schedule.batch_size=2 schedule.warmup_iters=50 schedule.eval_period=0 \
    schedule.checkpoint_period="$MAX_ITER" log.period=20 log.tensorboard=false \
    hydra.run.dir="$OUT/train" "$@"
fi
.venv/bin/rcnn-eval ckpt="$OUT/train/checkpoints/last.pt" dataset=shapes \
  dataset.train_size=1000 dataset.val_size=100 compress.fc6=1024 compress.fc7=256 \
  compress.save=true hydra.run.dir="$OUT/svd_1024_256"
