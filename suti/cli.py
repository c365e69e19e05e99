"""`suti`: the user's door. Every subcommand runs a flow and takes Hydra overrides:

    suti world
    suti foundation profile=smoke
    suti run profile=smoke expert.steps=50

Bad input (wrong config values, missing files, unreachable stores) ends with one line on
stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys

COMMANDS = {
    "world": ("suti.flows.world", "world_flow", "render the synthetic web, held-out subjects and pre-training renders"),
    "foundation": ("suti.flows.foundation", "foundation_flow", "train + check + register the world's foundation models"),
    "mine": ("suti.flows.mine", "mine_flow", "mine subject clusters from the web pages; write unseen prompts"),
    "experts": ("suti.flows.experts", "experts_flow", "fine-tune one expert per cluster and sample its unseen prompts"),
    "filter": ("suti.flows.filter", "filter_flow", "score every expert sample with delta-CLIP; build G(lambda)"),
    "train": ("suti.flows.train", "train_flow", "train the apprentice on G(lambda); register it as a candidate"),
    "generate": ("suti.flows.generate", "generate_flow", "render a subject from demos + a prompt with the apprentice"),
    "dreamsuti": ("suti.flows.dreamsuti", "dreamsuti_flow", "fine-tune the apprentice on one subject (Dream-SuTI)"),
    "eval": ("suti.flows.eval", "eval_flow", "DreamBench-protocol evaluation: Table 1, K-shot, v2 levels"),
    "rate": ("suti.flows.rate", "rate_flow", "serve the rating page; --push aggregates answers into MLflow"),
    "sweep": ("suti.flows.sweep", "sweep_flow", "lambda sweep: G(lambda) -> apprentice -> eval, nested MLflow runs"),
    "promote": ("suti.flows.promote", "promote_flow", "move the champion alias when the candidate is better"),
    "run": ("suti.flows.pipeline", "pipeline_flow", "the whole pipeline on the embedded synthetic world"),
    "serve": ("suti.serve", "serve", "serve a registered apprentice on MLflow's scoring server (loopback by default)"),
    "status": ("suti.status", "status", "which stages are finished in the workdir (reads the store's markers)"),
}
READ_ONLY = {"status"}  # commands that write nothing, not even the workdir's cache folders


from suti.errors import UserError  # noqa: E402  (re-exported: `from suti.cli import UserError` still works)


def _user_errors():
    from suti.config import ConfigError
    from suti.store import StoreError

    return (ConfigError, StoreError, UserError, FileNotFoundError, NotADirectoryError, PermissionError)


def preflight(cfg) -> None:
    """Reach the artifact store and the tracking server before any flow starts, so an
    unreachable one is one line and nothing is written (not even Prefect's database)."""
    if str(cfg.storage.uri).startswith("s3://"):
        from suti.store import open_store

        open_store(str(cfg.storage.uri), cfg.storage.endpoint_url)
    if str(cfg.tracking.uri).startswith(("http://", "https://")):
        from suti.tracking import _check_http

        _check_http(str(cfg.tracking.uri))


class _QuietUserErrors:
    """Logging filter: a user error raised inside a flow or task is logged by Prefect's engine
    with its traceback; keep the message, drop the traceback (the CLI ends with one line)."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, _user_errors()):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_error_tracebacks() -> None:
    import logging

    quiet = _QuietUserErrors()
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if not any(isinstance(f, _QuietUserErrors) for f in h.filters):
                h.addFilter(quiet)


OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][\w.]*=")


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_name(command: str, overrides: list[str]) -> str:
    """A flow run's name as the command line that started it, paths left out."""
    paths = ("workdir=", "reports_dir=", "storage.uri=", "tracking.uri=", "tracking.artifact_location=")
    shown = [o for o in overrides if not o.startswith(paths)]
    return " ".join(["suti", command, *shown])[:200]


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("suti")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {k: v for k, v in COMMANDS.items() if _exists(v[0])}
    if argv and argv[0] in ("--version", "-V"):
        print(f"suti {version()}")
        return 0
    top = argparse.ArgumentParser(prog="suti", description="SuTI: subject-driven text-to-image via apprenticeship learning",
                                  epilog="suti --version prints the version; suti COMMAND --help the command's options")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_) in commands.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] not in commands:
        if argv and not argv[0].startswith("-"):
            print(f"suti: error: unknown command {argv[0]!r} (choose from {', '.join(commands)})", file=sys.stderr)
            return 2
        top.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    try:
        from suti.config import compose, setup_env

        if "-h" not in rest and "--help" not in rest:
            # validate the config and point caches at the workdir before importing prefect
            cfg = compose([a for a in rest if OVERRIDE.match(a)])
            if name not in READ_ONLY:
                preflight(cfg)
                setup_env(cfg)
        module, fn, help_ = commands[name]
        mod = importlib.import_module(module)
        _quiet_user_error_tracebacks()  # after the import: Prefect has configured its handlers
        p = argparse.ArgumentParser(prog=f"suti {name}", description=help_)
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=smoke expert.steps=50")
        p.add_argument("--force", action="store_true", help="redo finished work instead of reusing it")
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)  # command-specific flags (e.g. generate's --demo), passed to the flow as kwargs
        args = p.parse_intermixed_args(rest)
        extra = {k: v for k, v in vars(args).items() if k not in ("overrides", "force")}
        target = getattr(mod, fn)
        if hasattr(target, "with_options") and getattr(target, "flow_run_name", None) is None:
            # the Prefect UI lists the run as the command that started it: `suti mine profile=smoke`
            target = target.with_options(flow_run_name=run_name(name, args.overrides))
        result = target(overrides=list(args.overrides), force=args.force, **extra)
        return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0
    except KeyboardInterrupt:
        print("suti: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except _user_errors() as e:
        msg = " ".join(str(e).split()) or e.__class__.__name__
        print(f"suti: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "ephemeral Prefect API server" not in str(e):
            raise
        import os

        print(f"suti: error: Prefect's temporary API server did not start within "
              f"{os.environ.get('PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS')} s (is the machine overloaded?); "
              "retry, or point PREFECT_API_URL at a running `prefect server start`", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
