"""Receptive fields: the algebra (framework-free), per-layer reports, and the check against gradients."""

from .algebra import AxisField, Field, LayerGeometry, chain_field
from .report import FieldReport, LayerField

__all__ = ["AxisField", "Field", "FieldReport", "LayerField", "LayerGeometry", "chain_field"]
