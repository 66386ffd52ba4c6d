"""The gRPC protocol's Python modules, generated from ``proto/`` and never edited by hand.

The generated code (``dnntune/v1/``) is committed, so a clone, an editable install and
a wheel all serve without running ``protoc``: nothing is compiled at run time, least of
all inside a serving process (grpcio-tools' ``protoc`` crashed there once TensorFlow and
protobuf were loaded). ``make proto`` regenerates it after an edit of the ``.proto``,
and ``tests/test_protocol_source.py`` fails while the two disagree.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from dnntune.errors import DnntuneError

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR / "_data" / "proto"  # the repository's proto/, shipped in the wheel
PROTO_FILE = PROTO_ROOT / "dnntune" / "v1" / "dnntune.proto"
OUT_DIR = PACKAGE_DIR / "v1"  # protoc names modules after the .proto's path: dnntune.v1
HEADER = '"""Generated from proto/dnntune/v1/dnntune.proto by `make proto`: do not edit."""\n'


def load_protocol() -> tuple[ModuleType, ModuleType]:
    """``(messages, services)``: the generated ``dnntune_pb2`` and ``dnntune_pb2_grpc``."""
    try:
        return (importlib.import_module("dnntune.v1.dnntune_pb2"),
                importlib.import_module("dnntune.v1.dnntune_pb2_grpc"))
    except ImportError as exc:  # e.g. a protobuf/grpcio older than the generated code
        raise DnntuneError(f"the generated protocol code in {OUT_DIR} does not import "
                           f"({exc}); reinstall dnntune") from None


def generate() -> Path:
    """Regenerate ``dnntune/v1/`` from the ``.proto`` (a developer's step: needs grpcio-tools).

    Run it as ``python -m dnntune.protocol`` in a fresh interpreter (``make proto``).
    """
    from grpc_tools import protoc

    if not PROTO_FILE.is_file():
        raise DnntuneError(f"{PROTO_FILE}: protocol source missing")
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix=".proto-", dir=PACKAGE_DIR) as tmp:
        code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
                            f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                            f"--pyi_out={tmp}", str(PROTO_FILE)])
        generated = Path(tmp) / "dnntune" / "v1"
        if code != 0 or not generated.is_dir():
            raise DnntuneError(f"{PROTO_FILE}: protoc failed with exit code {code}")
        (generated / "__init__.py").write_text(HEADER)
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(generated, OUT_DIR)
    return OUT_DIR


if __name__ == "__main__":
    print(f"generated {generate()}")
    sys.exit(0)
