"""The registry of dataset mappers, keyed by the official ``INPUT.DATASET_MAPPER_NAME`` values."""
from detectron2.utils.registry import Registry

__all__ = ["MAPPER_REGISTRY", "build_dataset_mapper"]


class _MapperRegistry(Registry):
    """A detectron2 Registry whose entries are named explicitly (config names are not class names)."""

    def register_as(self, name: str):
        """Class decorator: register the mapper class under ``name``."""

        def deco(cls):
            self._do_register(name, cls)
            return cls

        return deco


MAPPER_REGISTRY = _MapperRegistry("DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers by ``INPUT.DATASET_MAPPER_NAME``. Register a mapper class (with a configurable
``__init__`` and ``from_config(cls, cfg, is_train=True)``) with ``@MAPPER_REGISTRY.register_as("name")``.
"""


def build_dataset_mapper(cfg, is_train: bool = True):
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, built from ``cfg``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MAPPER_REGISTRY:
        valid = ", ".join(sorted(k for k, _ in MAPPER_REGISTRY))
        raise ValueError(f"INPUT.DATASET_MAPPER_NAME is {name!r}, which is not a registered dataset mapper; "
                       f"valid names: {valid}")
    return MAPPER_REGISTRY.get(name)(cfg, is_train=is_train)
