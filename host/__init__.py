"""qbench host: prepares and quantizes models, drives agents, computes and reports the figures."""

__version__ = "0.1.0"
