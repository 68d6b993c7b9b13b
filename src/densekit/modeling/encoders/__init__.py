"""Encoder wrappers: the PretrainedEncoder registry and the built-in encoders (importing registers them)."""
from densekit.modeling.encoders.base import DENSEKIT_CONFIG_NAME, PretrainedEncoder, read_densekit_config
from densekit.modeling.encoders.default import DefaultEncoder, pool
from densekit.modeling.encoders.two_tower import TwoTowerEncoder

available_encoders = PretrainedEncoder.available_encoders

__all__ = [
    "DENSEKIT_CONFIG_NAME",
    "DefaultEncoder",
    "PretrainedEncoder",
    "TwoTowerEncoder",
    "available_encoders",
    "pool",
    "read_densekit_config",
]
