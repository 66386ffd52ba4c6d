"""``dnntune store list|show|compare|export|import``, the ``--store``/``--no-store`` flags of
the commands that record, and ``store:<id>`` profiles for ``analyze``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError

STORE_HELP = ("store: a file, sqlite:///FILE or postgresql://USER:PASSWORD@HOST:PORT/DB "
              "(default: $DNNTUNE_STORE, else $XDG_DATA_HOME/dnntune/store.db)")
PREFIX = "store:"


def add_recording_flags(parser: argparse.ArgumentParser) -> None:
    """``--store URL`` and ``--no-store`` on a command that records its results."""
    parser.add_argument("--store", metavar="URL", default=None,
                        help=f"record the results in this {STORE_HELP}")
    parser.add_argument("--no-store", action="store_true",
                        help="do not record the results in the store")


def record(args: argparse.Namespace, body: Mapping[str, Any], kind: str,
           profiles: Sequence[Mapping[str, Any]] = ()) -> int | None:
    """Record after the files are written; a store failure is one stderr line."""
    if getattr(args, "no_store", False):
        return None
    from dnntune.store import record_quietly

    return record_quietly(body, getattr(args, "store", None), kind, profiles)


def is_stored(text: str | None) -> bool:
    return bool(text) and str(text).startswith(PREFIX)


def load_saved_profile(text: str, flag: str, url: str | None) -> Any:
    """A profile from a file, or ``store:<id>`` from the store (``url`` or the default)."""
    from dnntune.profiling.profile import Profile, load_profile

    if not is_stored(text):
        return load_profile(text)
    number = text[len(PREFIX):]
    if not number.isdigit():
        raise DnntuneError(f"{flag} {text}: expected store:<id>, the id a number "
                           "('dnntune store list' shows them)")
    from dnntune.store import open_store

    with open_store(url) as store:
        body = store.profile_body(int(number))
    return Profile.from_dict(body, f"{flag} {text}")


def add_store_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("store", help="list, show, compare, export and import what the store "
                                     "keeps: profiles, analyses, validate runs, studies")
    p.add_argument("--store", metavar="URL", default=None, help=f"the {STORE_HELP}")
    verbs = p.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="one line per stored record")
    ls.add_argument("--kind", choices=("profile", "analysis", "validation", "study"),
                    default="profile")
    ls.add_argument("--model", default=None, help="only this model name")
    ls.add_argument("--device", default=None, help="only this device label")
    ls.add_argument("--framework", default=None, help="only this framework (tensorflow, "
                                                      "litert)")
    ls.add_argument("--since", default=None, metavar="YYYY-MM-DD",
                    help="only records created on or after this date (UTC)")
    for name, text in (("show", "print a stored record's JSON"),
                       ("export", "write a stored record back as its JSON file")):
        v = verbs.add_parser(name, help=text)
        v.add_argument("--kind", choices=("profile", "analysis", "validation", "study"),
                       default="profile")
        v.add_argument("id", type=int)
        if name == "export":
            v.add_argument("out", metavar="FILE")
    cmp_ = verbs.add_parser("compare", help="two profiles' layers side by side, with ratio")
    cmp_.add_argument("a", type=int)
    cmp_.add_argument("b", type=int)
    imp = verbs.add_parser("import", help="load JSON files or run folders (analyze/validate/"
                                          "study --out) into the store")
    imp.add_argument("paths", nargs="+", metavar="FILE|DIR")
    p.set_defaults(handler=run_store)


def run_store(args: argparse.Namespace) -> int:
    from dnntune.store import import_path, open_store

    if args.verb == "list" and args.since:
        _check_date(args.since)
    with open_store(args.store) as store:
        if args.verb == "list":
            _list(store, args)
        elif args.verb == "show":
            json.dump(store.body(args.kind, args.id), sys.stdout, indent=1)
            sys.stdout.write("\n")
        elif args.verb == "export":
            _export(store.body(args.kind, args.id), args.out)
            print(f"{args.kind} {args.id} written to {args.out}", file=sys.stderr)
        elif args.verb == "import":
            for path in args.paths:
                for name, kind, record_id, created in import_path(store, path):
                    state = "stored" if created else "already stored"
                    print(f"{name}: {state} as {kind} {record_id}")
        else:
            a, b = store.layers(args.a), store.layers(args.b)
            for number, frame in ((args.a, a), (args.b, b)):
                if frame.empty:
                    raise DnntuneError(f"store {store.url}: no profile with id {number}")
            side = a.merge(b, on=["idx", "name"], how="outer", suffixes=("_a", "_b"))
            side["ratio_b_over_a"] = side["mean_ms_b"] / side["mean_ms_a"]
            print(side.to_string(index=False))
    return 0


def _check_date(text: str) -> None:
    from datetime import date

    try:
        date.fromisoformat(text)
    except ValueError:
        raise DnntuneError(f"--since {text!r}: expected a date YYYY-MM-DD") from None


def _list(store: Any, args: argparse.Namespace) -> None:
    if args.kind == "profile":
        where = {k: v for k, v in (("model_name", args.model), ("device_label", args.device),
                                   ("framework", args.framework)) if v}
        df = store.profiles(**where)
        cols = ["id", "model_name", "device_label", "framework", "precision", "side",
                "num_threads", "host", "created_utc", "end_to_end_mean_ms"]
    else:
        df = {"analysis": store.analyses, "validation": store.validations,
              "study": store.studies}[args.kind]()
        cols = list(df.columns)
        column = "models" if args.kind == "study" else "model_name"
        if args.model:
            df = df[df[column].str.split(",").apply(lambda names: args.model in names)]
        if args.device and "device_label" in df:
            df = df[df["device_label"] == args.device]
    if args.since:
        df = df[df["created_utc"] >= args.since]
    print(df[cols].to_string(index=False) if len(df) else f"(no {args.kind} records)")


def _export(body: Mapping[str, Any], out: str) -> None:
    try:
        Path(out).write_text(json.dumps(body, indent=1) + "\n")
    except OSError as exc:
        raise DnntuneError(f"{out}: cannot be written ({exc.strerror})") from None
