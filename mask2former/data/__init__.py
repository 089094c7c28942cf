"""Datasets, dataset mappers and their registration."""
from .datasets import register_shapes_world  # noqa: F401
