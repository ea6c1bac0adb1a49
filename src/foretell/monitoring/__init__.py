"""Monitoring: Prometheus metrics of serving (and, to come, the prediction log and drift)."""
