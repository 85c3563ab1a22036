"""The package's own exception types; every message names the input and the fix."""

from __future__ import annotations


class BayesLRError(Exception):
    """Base class of every error bayeslr raises on purpose."""


class SchemaError(BayesLRError, ValueError):
    """A run record, table row or field does not match the sweep schema."""


class StoreError(BayesLRError):
    """The sweep store refused an operation (conflict, unreadable directory, ...)."""


class ImportCSVError(SchemaError):
    """An external sweep table cannot be imported as it is."""


class PlanError(BayesLRError, ValueError):
    """A sweep plan is invalid; raised before any training starts."""


class ModelError(BayesLRError, ValueError):
    """The data cannot identify what the model was asked to fit."""


class PosteriorError(BayesLRError):
    """A saved posterior is unreadable, from another version, or asked an impossible question."""


class DataWarning(UserWarning):
    """Data were cleaned, or a term the data cannot identify was dropped from the model."""


class SamplingWarning(UserWarning):
    """Sampler diagnostics (R-hat, ESS, divergences) say the posterior is not trustworthy."""
