#!/usr/bin/env python
"""Run ``train_net.py`` with a second, independent shapes-world validation split registered: the dev split.

Inference settings (the test size, thresholds) must not be chosen on the validation split that reports the
results. The dev split is drawn like the validation split but with another seed (``--dev-seed``, default 1),
so its images are new to both the model and the validation numbers. It is generated on first use under
``$DETECTRON2_DATASETS/shapes_world_dev_seed<N>/`` and registered as ``shapes_world_dev_val_{panoptic,instance,
sem_seg}``; every other argument goes to ``train_net.py``:

    DETECTRON2_DATASETS=datasets python tools/eval_dev_split.py \\
        --config-file configs/shapes_world/maskformer2_R18_panoptic.yaml --eval-only \\
        MODEL.WEIGHTS output/shapes_world/maskformer2_R18_panoptic/model_final.pth \\
        DATASETS.TEST "('shapes_world_dev_val_panoptic',)" INPUT.MIN_SIZE_TEST 288 OUTPUT_DIR output/dev_288
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_net  # noqa: E402  (first: imports mask2former, then detectron2 quietly)
from detectron2.engine import default_argument_parser  # noqa: E402
from mask2former.data.datasets.register_shapes_world import register_shapes_world  # noqa: E402


def main():
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dev-seed", type=int, default=1, help="seed of the dev split (the default data uses 0)")
    known, rest = pre.parse_known_args()
    if known.dev_seed == 0:
        raise SystemExit("--dev-seed must differ from the default data's seed 0, or the dev split is the val split")
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    # One training image: the generator needs one, the dev split only uses its validation images.
    register_shapes_world(root, prefix="shapes_world_dev", dirname=f"shapes_world_dev_seed{known.dev_seed}",
                          num_train=1, seed=known.dev_seed)
    args = default_argument_parser().parse_args(rest)
    if args.num_gpus > 1 or args.num_machines > 1:
        # Worker processes are spawned fresh and would not have the dev split registered.
        raise SystemExit("tools/eval_dev_split.py runs in one process: leave out --num-gpus / --num-machines")
    train_net.main(args)


if __name__ == "__main__":
    main()
