"""dnntune: where to split a deep neural network between a phone and a cloud server.

The package is importable without TensorFlow: modules that run models import it
lazily, so the analyzer and the CLI's ``--help`` start fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
