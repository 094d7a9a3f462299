"""The ``orpo`` and ``aitraining`` commands (console scripts ``orpo.cli:main`` and ``orpo.cli:aitraining_main``).

``main`` dispatches (:mod:`orpo.cli.main`); ``orpo train`` is :mod:`orpo.cli.train`, the other commands
:mod:`orpo.cli.tools`, ``aitraining llm`` :mod:`orpo.cli.aitraining`; :mod:`orpo.cli.parser` is the argparse
they share.
"""

from orpo.cli.main import main


def aitraining_main(argv: list[str] | None = None) -> int:
    """``aitraining llm --train --model M --data-path D --project-name P --trainer orpo ...``"""
    from orpo.cli.aitraining import aitraining_main as run  # the CLI's lazy start: only when run

    return run(argv)


__all__ = ["aitraining_main", "main"]
