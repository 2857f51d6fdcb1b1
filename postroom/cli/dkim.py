"""``postroom dkim``: make DKIM keys and show the records to publish.

``keygen`` stores a new private key under the node's ``dkim_dir`` and
prints the TXT record for it as one zone-file line, followed by a
zone-file comment (``;``) naming the key file, so the whole output can
be pasted into a zone. ``show`` prints the records of existing keys
again; ``list`` prints one key per line: domain, selector, algorithm,
file. Keys take effect for signing without a restart (``DkimSigner``
rescans the directory), but only sign usefully once the record is
published: until then verifiers see a failing signature.
"""

from __future__ import annotations

import argparse
import sys

from postroom.cli.common import load_config
from postroom.mailauth import dkim

_ALGORITHMS = {"rsa": dkim.RSA, "ed25519": dkim.ED25519}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dkim",
        help="manage DKIM signing keys",
        description="Make DKIM signing keys and print the DNS records to publish.",
    )
    sub = parser.add_subparsers(dest="dkim_command", metavar="ACTION")
    sub.required = True

    keygen = sub.add_parser("keygen", help="make a key and print its DNS record")
    keygen.add_argument("domain", help="the domain that signs (From: domain)")
    keygen.add_argument(
        "--selector",
        default=dkim.DEFAULT_SELECTOR,
        help=f"the key's selector (default: {dkim.DEFAULT_SELECTOR})",
    )
    keygen.add_argument(
        "--algorithm",
        choices=sorted(_ALGORITHMS),
        default="rsa",
        help="rsa (rsa-sha256, understood everywhere) or ed25519 (RFC 8463, "
        "best added as a second key next to an rsa one); default: rsa",
    )
    keygen.add_argument(
        "--bits",
        type=int,
        default=None,
        help="RSA key size (default: 2048)",
    )
    keygen.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key with this selector",
    )
    keygen.set_defaults(func=_keygen)

    lst = sub.add_parser("list", help="list keys")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", help="print a domain's DNS records again")
    show.add_argument("domain")
    show.add_argument(
        "--selector", default=None, help="only this selector (default: all)"
    )
    show.set_defaults(func=_show)


def _keygen(args: argparse.Namespace) -> int:
    algorithm = _ALGORITHMS[args.algorithm]
    if args.bits is not None and algorithm != dkim.RSA:
        raise dkim.DkimError("--bits applies to rsa keys only")
    try:
        key = dkim.generate_key(
            load_config(args).dkim_dir,
            args.domain,
            args.selector,
            algorithm,
            2048 if args.bits is None else args.bits,
            force=args.force,
        )
    except dkim.KeyExists as e:
        raise dkim.DkimError(
            f"{e}; --force replaces it, --selector adds another"
        ) from None
    print(key.zone_line())
    print(f"; private key ({key.algorithm}): {key.path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = []
    status = 0
    for path in dkim.key_files(load_config(args).dkim_dir):
        try:
            key = dkim.read_key(path)
        except dkim.DkimError as e:
            # Show the others all the same; the exit status tells.
            print(f"postroom: {e}", file=sys.stderr)
            status = 1
            continue
        rows.append((key.domain, key.selector, key.algorithm, str(key.path)))
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))
    return status


def _show(args: argparse.Namespace) -> int:
    dkim_dir = load_config(args).dkim_dir
    if args.selector is not None:
        keys = [dkim.load_key(dkim_dir, args.domain, args.selector)]
    else:
        paths = dkim.key_files(dkim_dir, args.domain)
        if not paths:
            domain = dkim.normalize_domain(args.domain)
            raise dkim.DkimError(f"no DKIM key for {domain}")
        keys = [dkim.read_key(path) for path in paths]
    for key in keys:
        print(key.zone_line())
    return 0
