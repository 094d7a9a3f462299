"""The ``orpo`` and ``aitraining`` commands (console scripts ``orpo.cli:main`` and ``orpo.cli:aitraining_main``).

``main`` dispatches (:mod:`orpo.cli.main`); ``orpo train`` is :mod:`orpo.cli.train`, the other commands
:mod:`orpo.cli.tools`, ``aitraining llm`` :mod:`orpo.cli.aitraining`; :mod:`orpo.cli.parser` is the argparse
they share.
"""

from .main import aitraining_main, main

__all__ = ["aitraining_main", "main"]
