"""bayeslr: Bayesian learning-rate scaling laws with honest uncertainty.

The public API is small: the sweep schema and store, importers, the model fit, and the
questions a fitted posterior answers. Importing bayeslr never imports torch.
"""

from bayeslr.errors import BayesLRError
from bayeslr.schema import SCHEMA_VERSION, RunRecord
from bayeslr.store import SweepStore

__version__ = "0.1.0"

__all__ = ["BayesLRError", "RunRecord", "SCHEMA_VERSION", "SweepStore", "__version__"]
