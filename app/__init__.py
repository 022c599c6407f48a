"""Reco: a self-hosted online recommendation service."""

__version__ = "0.1.0"
