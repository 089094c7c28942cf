"""Generated datasets that make training, evaluation, the demo and the tests work offline.

``shapes_world`` (images: COCO instances, COCO panoptic, semantic PNGs) and ``shapes_world_video`` (YouTube-VIS
format) share one drawing kit and one cached-folder mechanism (:mod:`.generated_folder`). Registration of the
generated folders with detectron2 lives in :mod:`mask2former.data.datasets`.
"""
