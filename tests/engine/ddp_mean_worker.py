"""One rank of a 2-process gloo group for test_distributed: prints, as JSON, what
``image_weighted_mean`` gives for each (values, images) pair of this rank given in argv."""

import json
import sys

import torch.distributed as dist

from rcnn_cli.engine.distributed import image_weighted_mean

rank, port, cases = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
print(json.dumps([image_weighted_mean(values, images) for values, images in cases[rank]]))
dist.destroy_process_group()
