"""Retrieval losses, found by name: ``RetrievalLoss.find("infonce")``, ``RetrievalLoss.available_losses()``.

Importing this package registers the built-in losses; a user's own ``RetrievalLoss`` subclass
registers itself the same way when its class is defined.
"""
from densekit.modeling.losses.base import RetrievalLoss
from densekit.modeling.losses.distillation import KLDistillationLoss
from densekit.modeling.losses.infonce import InfoNCELoss
from densekit.modeling.losses.margin_mse import MarginMSELoss
from densekit.modeling.losses.multi_positive import MultiPositiveInfoNCELoss
from densekit.modeling.losses.multilevel import MultiLevelLoss

__all__ = ["RetrievalLoss", "InfoNCELoss", "KLDistillationLoss", "MarginMSELoss", "MultiLevelLoss",
           "MultiPositiveInfoNCELoss"]
