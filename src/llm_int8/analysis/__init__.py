"""Outlier features (Section 4 of the paper): where they are, and what zeroing them does."""

from .ablation import ablate_outliers, perplexity_and_attention
from .calibration import CALIBRATION_TEXT, DEFAULT_MIN_FRACTION, calibrate_outlier_dims, calibration_ids
from .hooks import SITE_PATTERNS, Site, find_sites, record_inputs, zero_input_dims
from .outliers import OutlierCriteria, OutlierStatistics, find_outlier_features
from .plots import plot_outliers

__all__ = [
    "CALIBRATION_TEXT",
    "DEFAULT_MIN_FRACTION",
    "calibrate_outlier_dims",
    "calibration_ids",
    "SITE_PATTERNS",
    "OutlierCriteria",
    "OutlierStatistics",
    "Site",
    "ablate_outliers",
    "find_outlier_features",
    "find_sites",
    "perplexity_and_attention",
    "plot_outliers",
    "record_inputs",
    "zero_input_dims",
]
