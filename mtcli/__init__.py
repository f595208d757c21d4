"""mtcli: train, run and score Transformer machine translation models from the command line."""

__version__ = "0.1.0"
