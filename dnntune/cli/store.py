"""``dnntune store list|show|compare``: read the shared profile store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dnntune.errors import DnntuneError
from dnntune.store import Store, open_store


def add_store_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("store", help="list, show and compare the profiles kept in the store")
    p.add_argument("--store", metavar="PATH", default=None,
                   help="store file (default: $DNNTUNE_STORE, else "
                        "$XDG_DATA_HOME/dnntune/store.db)")
    verbs = p.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="one line per stored profile")
    ls.add_argument("--model", default=None, help="only this model name")
    ls.add_argument("--device", default=None, help="only this device label")
    show = verbs.add_parser("show", help="print a stored profile's JSON")
    show.add_argument("id", type=int)
    cmp_ = verbs.add_parser("compare", help="two profiles' layers side by side, with ratio")
    cmp_.add_argument("a", type=int)
    cmp_.add_argument("b", type=int)
    exp = verbs.add_parser("export", help="write a stored profile back as a profile JSON file")
    exp.add_argument("id", type=int)
    exp.add_argument("out", metavar="FILE")
    imp = verbs.add_parser("import", help="load profile JSON files into the store")
    imp.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(handler=run_store)


def run_store(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        if args.verb == "list":
            where = {k: v for k, v in (("model_name", args.model),
                                       ("device_label", args.device)) if v}
            df = store.profiles(**where)
            cols = ["id", "model_name", "device_label", "side", "num_threads", "host",
                    "created_utc", "end_to_end_mean_ms"]
            print(df[cols].to_string(index=False) if len(df) else "(no profiles)")
        elif args.verb == "show":
            json.dump(store.profile_body(args.id), sys.stdout, indent=1)
            sys.stdout.write("\n")
        elif args.verb == "export":
            _export(store, args.id, args.out)
        elif args.verb == "import":
            _import(store, args.files)
        else:
            a, b = store.layers(args.a), store.layers(args.b)
            side = a.merge(b, on=["idx", "name"], how="outer", suffixes=("_a", "_b"))
            side["ratio_b_over_a"] = side["mean_ms_b"] / side["mean_ms_a"]
            print(side.to_string(index=False))
    finally:
        store.close()
    return 0


def _export(store: Store, profile_id: int, out: str) -> None:
    body = store.profile_body(profile_id)
    try:
        Path(out).write_text(json.dumps(body, indent=1) + "\n")
    except OSError as exc:
        raise DnntuneError(f"{out}: cannot be written ({exc.strerror})") from None
    print(f"profile {profile_id} written to {out}", file=sys.stderr)


def _import(store: Store, files: list[str]) -> None:
    for name in files:
        try:
            body = json.loads(Path(name).read_text())
            stored = store.add_profile(body)
        except (OSError, ValueError) as exc:
            raise DnntuneError(f"{name}: not a readable profile JSON ({exc})") from None
        except (KeyError, TypeError) as exc:
            raise DnntuneError(f"{name}: not a dnntune profile (missing {exc})") from None
        state = "stored" if stored.created else "already stored"
        print(f"{name}: {state} as profile {stored.id}")
