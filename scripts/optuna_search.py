"""Optuna hyper-parameter search over ``rcnn-train`` (see rcnn_cli/engine/optuna_search.py).

    python scripts/optuna_search.py --trials 20 --out outputs/optuna \
        --search 'schedule.lr=tag(log,interval(1e-4,1e-2))' \
        --search 'schedule.batch_size=choice(2,4)' experiment=shapes_cpu schedule.max_iter=300
"""

import sys

from rcnn_cli.engine.optuna_search import main

if __name__ == "__main__":
    sys.exit(main())
