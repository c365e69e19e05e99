"""`suti`: the user's door. Every subcommand runs a flow and takes Hydra overrides:

    suti world
    suti foundation profile=smoke
    suti run profile=smoke expert.steps=50

Bad input (wrong config values, missing files, unreachable stores) ends with one line on
stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "world": ("suti.flows.world", "world_flow", "render the synthetic web, held-out subjects and pre-training renders"),
    "foundation": ("suti.flows.foundation", "foundation_flow", "train + check + register the world's foundation models"),
}


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def _user_errors():
    from suti.config import ConfigError
    from suti.store import StoreError

    return (ConfigError, StoreError, UserError, FileNotFoundError, NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="suti", description="SuTI: subject-driven text-to-image via apprenticeship learning")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=smoke expert.steps=50")
        p.add_argument("--force", action="store_true", help="redo finished work instead of reusing it")
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        from suti.config import compose, setup_env

        cfg = compose(args.overrides)  # validate before importing heavy libraries
        setup_env(cfg)
        import importlib

        module, fn, _ = COMMANDS[args.command]
        flow = getattr(importlib.import_module(module), fn)
        flow(overrides=list(args.overrides), force=args.force)
        return 0
    except KeyboardInterrupt:
        print("suti: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except _user_errors() as e:
        msg = " ".join(str(e).split()) or e.__class__.__name__
        print(f"suti: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
