"""Monitoring: freshness of every target (`invoke status`) and Prometheus metrics after every run."""
