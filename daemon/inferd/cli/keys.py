"""`inferd keys generate`: CURVE keys for tcp endpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_keys(sub) -> None:
    k = sub.add_parser("keys", help="CURVE keys for tcp endpoints")
    ksub = k.add_subparsers(metavar="ACTION", required=True)
    kg = ksub.add_parser("generate", help="write NAME.key (public, 0644) and NAME.key_secret (0600) into DIR")
    kg.add_argument("dir", type=Path)
    kg.add_argument("--name", default="server", help="file name stem (default server)")
    kg.set_defaults(func=cmd_keys_generate)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from inferd.ingest.security import generate_keys

    if (args.dir / f"{args.name}.key_secret").exists():
        print(f"inferd keys: {args.dir / args.name}.key_secret exists; not overwriting", file=sys.stderr)
        return 1
    public, secret = generate_keys(args.dir, args.name)
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (keep it here, mode 0600)")
    return 0
