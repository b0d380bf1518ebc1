"""The `netspec` command line. Every user mistake ends as `file:line: what — fix`, exit status 2.

Commands live in `netspec/commands/`, each module with `add_arguments(parser, name)` and `run(args)`; this file
only dispatches, importing just the command it runs (`predict` never loads torch).
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from netspec import __version__
from netspec.errors import UserError, did_you_mean
from netspec.limits import Limits

COMMANDS = {
    "compile": ("netspec.commands.build", "validate a spec, print its summary, write build/<name>/"),
    "draw": ("netspec.commands.build", "render the graph with graphviz (svg, png, pdf or dot)"),
    "train": ("netspec.commands.train", "train with all losses, on CPU, a GPU or many (DDP)"),
    "eval": ("netspec.commands.train", "per-exit accuracy table on the test split"),
    "export": ("netspec.commands.export", "write an ONNX model (--prune-aux: without branches) and check it in onnxruntime"),
    "predict": ("netspec.commands.predict", "classify images or arrays with an ONNX model (onnxruntime only)"),
    "sweep": ("netspec.commands.sweep", "train a spec moved N ways on paired seeds (grid or TPE, Optuna); table per exit"),
    "probe": ("netspec.commands.probe", "CNDS's gradient probe: where should a branch go?"),
    "calibrate": ("netspec.commands.calibrate", "an early-exit cascade's accuracy vs FLOPs curve; thresholds for a target"),
    "time": ("netspec.commands.time", "forward/backward time per node and branch, train step vs deploy (like caffe time)"),
    "import-caffe": ("netspec.commands.import_caffe", "Caffe .prototxt (+ solver, .caffemodel) → a spec (+ checkpoint)"),
}


# --- entry point -----------------------------------------------------------------------------

DESCRIPTION = "Declarative deeply-supervised CNNs: YAML spec → torch.fx → train → pruned ONNX."


def top_parser() -> argparse.ArgumentParser:
    """`netspec COMMAND ...`: lists the commands without importing them."""
    top = argparse.ArgumentParser(prog="netspec", description=DESCRIPTION)
    top.add_argument("--version", action="version", version=f"netspec {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return top


def command_parser(name: str) -> argparse.ArgumentParser:
    """One command's parser; only that command's module is imported (`predict` never loads torch)."""
    module, help_text = COMMANDS[name]
    command = argparse.ArgumentParser(prog=f"netspec {name}", description=help_text)
    command.set_defaults(command=name, module=module)
    importlib.import_module(module).add_arguments(command, name)
    return command


def parse(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        raise UserError(f"there is no command '{argv[0]}'", did_you_mean(argv[0], COMMANDS))
    if not argv or argv[0] not in COMMANDS:
        top_parser().parse_args(argv)  # prints usage, or help, or the version, and exits
    # intermixed: options may stand between the spec, overrides and output file
    command = command_parser(argv[0])
    args, unknown = command.parse_known_intermixed_args(argv[1:])
    if unknown:
        raise UserError(f"`{argv[0]}` has no option {unknown[0]}", _option_hint(command, unknown[0]))
    args.limits = Limits.from_env(code=getattr(args, "allow_custom", False))  # the one read of NETSPEC_MAX_*
    return args


def _option_hint(command: argparse.ArgumentParser, option: str) -> str:
    """A did-you-mean among the command's options, or the override when the option names a spec setting."""
    from netspec.spec import Spec

    key = option.lstrip("-").split("=")[0].replace("-", "_")
    sections = [name for name, field in Spec.model_fields.items()
                if isinstance(field.annotation, type) and key in getattr(field.annotation, "model_fields", {})]
    if sections:
        return f"spec settings are overrides: {sections[0]}.{key}=VALUE"
    options = [o for action in command._actions for o in action.option_strings]
    hint = did_you_mean(option.split("=")[0], options)
    return hint if hint.startswith("did you mean") else "see --help; spec settings are overrides like train.epochs=3"


class Terminated(BaseException):
    """SIGTERM outside a training loop (which saves a checkpoint first): the command stops as on SIGINT."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    if previous is not None:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        args = parse(sys.argv[1:] if argv is None else list(argv))
        return importlib.import_module(args.module).run(args) or 0
    except UserError as err:
        print(err, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("netspec: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("netspec: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as err:  # the file system refused (disk full, permissions, a name too long): no traceback
        print(UserError(f"{err.strerror or type(err).__name__}: {err.filename or ''}".rstrip(": "),
                        "check the path, its permissions and the free space"), file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
