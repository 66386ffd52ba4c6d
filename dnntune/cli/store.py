"""``dnntune store list|show|compare``: read the shared profile store."""

from __future__ import annotations

import argparse
import json
import sys

from dnntune.store import open_store


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
        else:
            a, b = store.layers(args.a), store.layers(args.b)
            side = a.merge(b, on=["idx", "name"], how="outer", suffixes=("_a", "_b"))
            side["ratio_b_over_a"] = side["mean_ms_b"] / side["mean_ms_a"]
            print(side.to_string(index=False))
    finally:
        store.close()
    return 0
