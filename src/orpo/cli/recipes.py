"""``orpo config list`` / ``orpo config path NAME``: the recipes and launch configs shipped in the package.

``path`` prints a file's installed path, for ``accelerate launch --config_file $(orpo config path fsdp)``.
"""

from __future__ import annotations

import argparse

from orpo.config.shipped import launch_names, recipe_names, shipped_path

PROG = "orpo config"


def cmd_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Shipped recipes and accelerate/DeepSpeed configs.")
    commands = parser.add_subparsers(dest="action", required=True)
    commands.add_parser("list", help="name the shipped recipes and launch configs")
    path = commands.add_parser("path", help="print the installed path of a shipped file")
    path.add_argument("name", help="a name from `orpo config list`")
    args = parser.parse_args(argv)
    if args.action == "list":
        print("recipes (orpo train --config NAME):")
        print("\n".join(f"  {name}" for name in recipe_names()))
        print("launch configs (accelerate launch --config_file $(orpo config path NAME); DeepSpeed JSONs):")
        print("\n".join(f"  {name}" for name in launch_names()))
        return 0
    print(shipped_path(args.name))
    return 0
