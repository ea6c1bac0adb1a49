"""Insight beside the predictions: causal effects of interventions (``insight.causal``)."""
