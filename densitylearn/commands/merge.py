"""Merge coefficient datasets (for example fit-basis shards) into one file.

All inputs must share kind, targets, auxiliary basis, SAED, metric and reference settings;
a structure name present in two inputs is an error.
"""

HELP = "merge coefficient datasets (fit-basis shards) into one"


def add_arguments(p):
    p.add_argument("inputs", nargs="+", metavar="H5", help="datasets to merge, in order")
    p.add_argument("--out", required=True, help="merged dataset (.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args):
    import os

    from ..data import merge_datasets
    from ..errors import InputError

    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(f"{args.out}: exists; pass --overwrite to replace it")
    n = merge_datasets(args.inputs, args.out)
    print(f"wrote {args.out}: {n} structures from {len(args.inputs)} files")
    return 0
