"""The gRPC protocol's Python modules, generated from proto/ and never edited by hand.

:func:`load_protocol` compiles ``proto/dnntune/v1/dnntune.proto`` with grpcio-tools into
the ``dnntune.v1`` subpackage when the generated code is missing or was made from a
different .proto (a sha256 stamp decides), then imports it. ``make`` runs
``python -m dnntune.protocol`` at install time, so normal runs only check the stamp.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from dnntune.errors import DnntuneError

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parent / "proto"
PROTO_FILE = PROTO_ROOT / "dnntune" / "v1" / "dnntune.proto"
OUT_DIR = PACKAGE_DIR / "v1"  # protoc names modules after the .proto's path: dnntune.v1
STAMP = OUT_DIR / "SOURCE_SHA256"


def generate(force: bool = False) -> Path:
    """(Re)generate ``dnntune/v1/`` if stale; returns that folder."""
    if not PROTO_FILE.is_file():
        if (OUT_DIR / "dnntune_pb2.py").is_file():
            return OUT_DIR  # an installed package without the .proto: use what was built
        raise DnntuneError(f"{PROTO_FILE}: protocol source missing")
    digest = hashlib.sha256(PROTO_FILE.read_bytes()).hexdigest()
    if not force and STAMP.is_file() and STAMP.read_text().strip() == digest:
        return OUT_DIR
    from grpc_tools import protoc

    # Generate into a temporary folder and move it into place, so that two processes
    # starting at once never import half-written modules.
    tmp = Path(tempfile.mkdtemp(prefix=".proto-", dir=PACKAGE_DIR))
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
                        f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                        f"--pyi_out={tmp}", str(PROTO_FILE)])
    generated = tmp / "dnntune" / "v1"
    if code != 0 or not generated.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise DnntuneError(f"{PROTO_FILE}: protoc failed with exit code {code}")
    (generated / "__init__.py").write_text('"""Generated from proto/dnntune/v1: do not edit."""\n')
    (generated / "SOURCE_SHA256").write_text(digest + "\n")
    old = PACKAGE_DIR / f".proto-old-{os.getpid()}"
    if OUT_DIR.exists():
        OUT_DIR.rename(old)
    with contextlib.suppress(OSError):  # another process won the race: just as fresh
        generated.rename(OUT_DIR)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return OUT_DIR


def load_protocol() -> tuple[ModuleType, ModuleType]:
    """``(messages, services)``: the generated ``dnntune_pb2`` and ``dnntune_pb2_grpc``."""
    generate()
    return (importlib.import_module("dnntune.v1.dnntune_pb2"),
            importlib.import_module("dnntune.v1.dnntune_pb2_grpc"))


if __name__ == "__main__":
    print(f"generated {generate(force='--force' in sys.argv)}")
