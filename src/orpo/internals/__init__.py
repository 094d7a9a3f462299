"""orpo's boundary with transformers beyond its stable public API.

:mod:`.private` is the one module that touches transformers' private names; :mod:`.releases` holds
what differs between the supported releases.  Both sit at the bottom so every layer may use them.
"""
