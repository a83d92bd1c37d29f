"""Metric definitions and meters, and the paired statistics of the report."""
