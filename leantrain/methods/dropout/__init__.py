"""Dropout schedules: dynamic dropout over training time and depth (see README.md)."""
from .dynamic_dropout import (DynamicDropout, DynamicDropoutConfig, SiteOverride, SiteOverrides, depth_multipliers,
                              dropout_at, set_rates, site_rates, validation_decision)

__all__ = ["DynamicDropout", "DynamicDropoutConfig", "SiteOverride", "SiteOverrides", "depth_multipliers",
           "dropout_at", "set_rates", "site_rates", "validation_decision"]
