"""API key administration: `python -m api.admin create --name NAME --owner OWNER`,
`python -m api.admin list`, `python -m api.admin revoke ID_OR_PREFIX`. Keys are stored hashed;
`create` prints the key once."""

import argparse
import sys

from sqlalchemy import select

from core.db import get_sessionmaker
from core.keys import create_key, revoke_key
from core.tables import ApiKey


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m api.admin", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create a key and print it (once)")
    c.add_argument("--name", required=True)
    c.add_argument("--owner", required=True)
    sub.add_parser("list", help="list keys (never the keys themselves)")
    r = sub.add_parser("revoke", help="revoke a key by id or prefix")
    r.add_argument("key")
    args = ap.parse_args(argv)
    with get_sessionmaker()() as s:
        if args.cmd == "create":
            row, key = create_key(s, args.name, args.owner)
            print(f"id: {row.id}\nowner: {row.owner}\nAPI key: {key}")
        elif args.cmd == "list":
            for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.id}  {k.prefix}...  {k.owner:20}  {k.name:20}  {state}")
        else:
            n = revoke_key(s, args.key)
            print(f"revoked {n} key(s)")
            return 0 if n else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
