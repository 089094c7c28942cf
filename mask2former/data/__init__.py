"""Datasets, dataset mappers and their registration."""
from .datasets import register_shapes_world  # noqa: F401
from .datasets import register_coco_instance  # noqa: F401  (detectron2's COCO instance splits, checked reader)
from .datasets import register_coco_panoptic_annos_semseg  # noqa: F401
from .datasets import register_ade20k_semantic  # noqa: F401
from .datasets import register_ade20k_full  # noqa: F401
from .datasets import register_ade20k_panoptic  # noqa: F401
from .datasets import register_ade20k_instance  # noqa: F401
from .datasets import register_coco_stuff_10k  # noqa: F401
from .datasets import register_mapillary_vistas  # noqa: F401
from .datasets import register_mapillary_vistas_panoptic  # noqa: F401
from .datasets import register_folder  # noqa: F401  (custom folders: register_*_folder, DATASETS.REGISTER)
from . import dataset_mappers  # noqa: F401
from .datasets import register_ytvis  # noqa: F401  (YouTube-VIS, OVIS, shapes world videos; the "ytvis" mapper)
