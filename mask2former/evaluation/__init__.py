"""Evaluation: evaluator selection for a dataset, and video instance segmentation AP (beyond detectron2's own)."""
from .build import build_evaluator  # noqa: F401
from .ytvis_evaluation import YTVISEvaluator  # noqa: F401
