"""The ``helios`` command (also ``python -m helios``): parse the command line, dispatch.

Exit status: 0 on success; 1 when training, testing or a comparison failed (or
``verify-resume`` found a difference); 2 for a config or command line that cannot run
(reported before anything trains); ``128 + N`` when signal N stopped training (143 for
SIGTERM), as the trainer's preemption does.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

USAGE_ERROR = 2

_FIT_HELP = """\
overrides: --key.path=value sets a key of the config (the value is read as YAML:
  --trainer.total_steps=20  --model.args.optimizer.args.lr=0.1  --plugins=[])
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios",
        description="Train, test, inspect and verify helios runs.",
        allow_abbrev=False,
    )
    from helios import __version__

    parser.add_argument("--version", action="version", version=f"helios {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_FIT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        sub.add_argument("config", type=pathlib.Path, help="the run's YAML or JSON config")
        sub.add_argument(
            "--print-config",
            nargs="?",
            const="yaml",
            choices=["yaml", "json"],
            help="print the resolved config (every default filled in) and exit",
        )
        return sub

    fit = config_command("fit", "train (or resume) the run a config file describes")
    fit.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="allow KEY (a dotted config key, or a prefix) to differ from the config saved "
        "in the checkpoint the run resumes from; repeatable",
    )
    fit.add_argument("--fingerprint", type=pathlib.Path, help=argparse.SUPPRESS)
    fit.add_argument("--interrupt", help=argparse.SUPPRESS)  # SIGNAL:STEP:FRACTION
    config_command("test", "test the model of a run (from its newest checkpoint)")
    verify = config_command(
        "verify-resume",
        "train a config uninterrupted and with kills and resumes; compare bit for bit",
    )
    verify.add_argument("--kills", type=int, default=3, help="SIGKILLs (default: 3)")
    verify.add_argument("--steps", type=int, help="total_steps of both runs (default: config's)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    verify.add_argument("--workdir", type=pathlib.Path, help="keep the runs in this folder")
    verify.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one process may take (600)"
    )

    inspect = commands.add_parser(
        "inspect",
        help="show what a checkpoint holds (no model code needed)",
        description="Show what a checkpoint (a file or a .dcp folder) holds, read safely.",
        allow_abbrev=False,
    )
    inspect.add_argument("checkpoint", type=pathlib.Path)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument(
        "--allow-type",
        action="append",
        default=[],
        metavar="MODULE.CLASS",
        help="allow a type of your own in the file (imported from its module); repeatable",
    )

    export = commands.add_parser(
        "export",
        help="write a .dcp checkpoint as one file, or a model's networks as ONNX",
        description="Write a sharded (.dcp) checkpoint as one full file, or export the "
        "networks of a checkpoint's model to ONNX (--onnx, with the run's --config).",
        allow_abbrev=False,
    )
    export.add_argument("checkpoint", type=pathlib.Path)
    export.add_argument("-o", "--output", type=pathlib.Path, help="the file to write")
    export.add_argument("--onnx", type=pathlib.Path, metavar="OUT.onnx", help="export to ONNX")
    export.add_argument("--config", type=pathlib.Path, help="the run's config (for --onnx)")

    migrate = commands.add_parser(
        "migrate",
        help="bring a folder of Helios 1.x checkpoints up to date (in place)",
        description="Bring the checkpoints of a folder (Helios 1.x, older helios) up to the "
        "current layout, in place and atomically.",
        allow_abbrev=False,
    )
    migrate.add_argument("root", type=pathlib.Path, help="the folder of *.pth files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``helios`` command.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    from .config import ConfigError

    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("fit", "test", "verify-resume")
    if extra and not takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "interrupt", None) is not None and args.fingerprint is None:
        parser.error("--interrupt needs --fingerprint")
    try:
        if takes_overrides:
            return _config_command(args, extra)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "export":
            return _export(args, parser)
        return _migrate(args)
    except (ConfigError, ImportError) as error:
        _report(error)
        return USAGE_ERROR


def _config_command(args: argparse.Namespace, extra: list[str]) -> int:
    from .config import ConfigError, dump_config, parse_overrides, resolve_config

    config = resolve_config(args.config, parse_overrides(extra))
    if args.print_config:
        print(dump_config(config.data, args.print_config), end="")
        return 0
    if args.command == "fit":
        from .run import fit

        plugins = []
        if args.fingerprint is not None:
            from .fingerprint import FingerprintPlugin, Interruption

            try:
                plan = None if args.interrupt is None else Interruption.parse(args.interrupt)
            except ValueError as error:
                raise ConfigError("--interrupt", str(error)) from None
            plugins.append(FingerprintPlugin(args.fingerprint, plan))
        return fit(config, args.allow_change, plugins)
    if args.command == "test":
        from .run import test

        return test(config)
    from .verify import RunFailedError, verify_resume

    model = config.model.target(**config.model.kwargs)
    try:
        return verify_resume(
            args.config, config, extra, kills=args.kills, steps=args.steps, seed=args.seed,
            workdir=args.workdir, timeout=args.timeout, model_types=model.types_for_safe_load(),
        )  # fmt: skip
    except RunFailedError as error:
        _report(error)
        return 1


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import CheckpointReadError, format_summary, read_checkpoint, summarize

    try:
        summary = summarize(read_checkpoint(args.checkpoint, args.allow_type))
    except CheckpointReadError as error:
        _report(error)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary), end="")
    return 0


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .export import export_onnx, export_single_file
    from .inspection import CheckpointReadError

    try:
        if args.onnx is not None:
            if args.config is None:
                parser.error("export --onnx needs the run's --config (it names the model)")
            from .config import resolve_config

            for path in export_onnx(args.checkpoint, resolve_config(args.config), args.onnx):
                print(f"wrote {path}")
            return 0
        print(f"wrote {export_single_file(args.checkpoint, args.output)}")
    except CheckpointReadError as error:
        _report(error)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import pickle

    from helios.chkpt_migrator import migrate_checkpoints_to_current_version

    try:
        migrate_checkpoints_to_current_version(args.root)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        _report(error)
        return 1
    return 0


def _report(error: BaseException) -> None:
    """Show why the command failed, on stderr, as command-line tools do (``error: ...``)."""
    print(f"error: {error}", file=sys.stderr)


def console_main() -> None:
    """Entry point of the ``helios`` console script."""
    sys.exit(main())


__all__ = ["console_main", "main"]
