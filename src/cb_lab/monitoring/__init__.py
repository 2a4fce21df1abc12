"""Metrics and memory profiling for cb_lab."""
