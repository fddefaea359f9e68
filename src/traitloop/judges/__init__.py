"""Scorers of answers. base.py: the Judge protocol; probe.py: offline trait probe;
coherence.py: offline coherence (log-likelihood under the frozen original model, repetition, distinct-2)."""
