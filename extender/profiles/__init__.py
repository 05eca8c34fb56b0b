"""Learned profiles: samples from Prometheus, profile documents, the refresh while serving."""
