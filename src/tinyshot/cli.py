"""The `tinyshot` command: a thin layer over the Python API.

Each stage package owns its sub-commands in a `commands.py` with `register(subparsers)`;
this file only wires them together and turns user errors into one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tinyshot.utils.threads import set_default_env

set_default_env()  # OMP_WAIT_POLICY=PASSIVE: must precede the first `import torch`

from tinyshot.errors import TinyshotError  # noqa: E402

# Stage packages that contribute sub-commands, in the order `tinyshot --help` lists them.
COMMAND_MODULES = [
    "tinyshot.data.commands",
    "tinyshot.evaluation.commands",
    "tinyshot.diffusion.commands",
    "tinyshot.diffusion.pretrain.commands",
    "tinyshot.models.commands",
    "tinyshot.distill.commands",
    "tinyshot.pipeline.commands",
]


def build_parser() -> argparse.ArgumentParser:
    from tinyshot import __version__

    parser = argparse.ArgumentParser(
        prog="tinyshot",
        description="Few-shot distillation with textual and null-text inversion (TINT).",
    )
    parser.add_argument("--version", action="version", version=f"tinyshot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level console log")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="speed benchmarks that print a table")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
        if hasattr(module, "register_bench"):
            module.register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from tinyshot.utils.interrupt import exit_code, sigterm_raises
    from tinyshot.utils.logging import setup_logging

    setup_logging(verbose=args.verbose)
    try:
        from tinyshot.utils.threads import configure_threads

        # No more threads than the cores this process may use (affinity, cgroup quota).
        configure_threads(getattr(args, "threads", None))
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C
            result = args.func(args)
    except TinyshotError as e:
        print(f"tinyshot {args.command}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt as e:  # Ctrl-C (exit 130) or SIGTERM (exit 143)
        print(
            f"tinyshot {args.command}: interrupted; finished work is kept, rerun to resume",
            file=sys.stderr,
        )
        return exit_code(e)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
