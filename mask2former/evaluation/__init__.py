"""Evaluators of Mask2Former (beyond detectron2's own)."""
from .ytvis_evaluation import YTVISEvaluator  # noqa: F401
