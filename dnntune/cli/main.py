"""The ``dnntune`` command line: argument parsing and wiring only; logic lives in the library.

Every :class:`~dnntune.errors.DnntuneError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from dnntune import __version__
from dnntune.cli import flags
from dnntune.errors import DnntuneError, describe_error

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (exit code 2 either way)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dnntune",
        description="Where to split a deep neural network between a phone and a cloud "
                    "server: per-layer profiling on both sides, every cut point under "
                    "3G/4G/Wi-Fi and recorded links, latency-first or energy-first.")
    parser.add_argument("--version", action="version", version=f"dnntune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_graph(sub)
    for register in _optional_commands():
        register(sub)
    return parser


def _add_graph(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("graph", help="show a model's layer graph and every cut point",
                       description="Load a model (zoo name, .keras/.h5 file, frozen .pb or "
                                   "SavedModel) and list every cut point with the tensors "
                                   "that cross it.")
    add_model_arguments(p)
    p.add_argument("--atomic", metavar="NAMES", default="",
                   help="nested models to keep as one layer, comma-separated (default: every "
                        "nested functional or Sequential model is listed layer by layer)")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="table for people, json (stdout) for programs (default: table)")
    p.set_defaults(handler=run_graph)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--input-shape``, ``--batch-size``: shared by every model command."""
    p.add_argument("--model", required=True, metavar="NAME|PATH",
                   help="a zoo model name, a Keras .keras/.h5 file, or a TensorFlow graph "
                        "(frozen .pb[?input=..&output=..] or SavedModel folder)")
    p.add_argument("--input-shape", metavar="DIMS",
                   help="input shape without the batch, e.g. 224,224,3 ('A;B' for several)")
    p.add_argument("--batch-size", type=flags.BATCH, default=1, metavar="N",
                   help="batch dimension for shapes and bytes (default: 1)")


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:  # type: ignore[type-arg]
    from dnntune.cli import commands

    return commands.REGISTRY


def run_graph(args: argparse.Namespace) -> int:
    from dnntune.model.cuts import enumerate_cuts
    from dnntune.model.loading import load_model, parse_input_shape

    shapes = parse_input_shape(args.input_shape) if args.input_shape else None
    atomic = tuple(n.strip() for n in args.atomic.split(",") if n.strip())
    loaded = load_model(args.model, shapes, batch_size=args.batch_size, calibrate=False,
                        atomic=atomic)
    cuts = enumerate_cuts(loaded.graph)
    if args.format == "json":
        doc = {"model": loaded.name,
               "layers": [_layer_json(layer) for layer in loaded.graph.layers],
               "cuts": [c.to_dict() for c in cuts]}
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    from dnntune.model.graph import structure_notes
    from dnntune.report.tables import print_cut_table

    print_cut_table(loaded.graph, cuts)
    from dnntune.model.tf_graph import GraphModel

    if isinstance(loaded.model, GraphModel):  # scopes, not nested Keras models
        print(loaded.model.describe())
        return 0
    for note in structure_notes(loaded.graph):
        print(note)
    return 0


def _layer_json(layer: object) -> dict[str, object]:
    d = layer.to_dict()  # type: ignore[attr-defined]
    return {k: d[k] for k in ("name", "type", "inputs", "output_shapes", "output_bytes",
                              "params", "flops")}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dnntune`` console script; returns the exit code."""
    # gRPC's C core logs handshake failures and the like to stderr; dnntune reports each
    # failure itself in one line. Set GRPC_VERBOSITY yourself to see gRPC's own logs.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except DnntuneError as exc:
        print(f"dnntune: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `dnntune graph ... | head`: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file or folder the user named: one line, never a traceback
        if exc.strerror is None:
            raise
        print(f"dnntune: error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dnntune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
