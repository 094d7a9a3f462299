"""Training: ``ORPOTrainer``, the run engine behind ``orpo train``, metrics, the health check, the
summary and model card, several processes, evaluation, and (in :mod:`.reliability`) what keeps a run safe.
"""
