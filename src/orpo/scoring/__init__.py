"""Scoring a batch: per-token log-probs of chosen and rejected completions in one forward pass,
whatever its layout (padded, padding-free, shared prompt), and the collators that write those layouts.
"""
