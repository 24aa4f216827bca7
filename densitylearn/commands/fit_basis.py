"""Fit reference densities (PySCF chkfiles) onto an auxiliary basis: the training dataset.

Writes one HDF5 coefficient dataset with total (TCD) and SAED coefficients per structure
(difference = total - SAED, the Delta-SAED target) and both fitting floors. Interrupted
runs resume: finished structures are kept in OUT.parts/ until the dataset is written.
Shards (--shard i/n) write one file each; join them with `densitylearn merge`.
"""

HELP = "fit reference densities onto an auxiliary basis (training dataset)"


def add_arguments(p):
    p.add_argument("chk", nargs="+", metavar="CHK", help="PySCF chkfiles (e.g. from densitylearn compute)")
    p.add_argument("--auxbasis", default="def2-universal-jfit",
                   help="auxiliary basis: PySCF name, etb:BETA, shipped name or NWChem file "
                        "(default: %(default)s)")
    p.add_argument("--metric", choices=("coulomb", "overlap"), default="coulomb",
                   help="density-fitting metric (default: %(default)s)")
    p.add_argument("--no-constraint", action="store_true",
                   help="do not constrain fits to the exact electron count")
    p.add_argument("--xc", default=None,
                   help="functional of the references, for SAED (default: read from the chkfile)")
    p.add_argument("--floor-grid-level", type=int, default=3,
                   help="Becke grid level for the fitting floors (default: %(default)s)")
    p.add_argument("--no-floors", action="store_true",
                   help="skip the fitting floors (faster for large training sets; stored as NaN)")
    p.add_argument("--out", required=True, help="output dataset (.h5)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--shard", default=None, metavar="I/N", help="fit only chkfiles k with k %% N == I")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--keep-going", action="store_true",
                   help="skip chkfiles that cannot be fitted instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--rcond", type=float, default=None,
                   help="periodic chkfiles only: relative eigenvalue cut of the grid least-squares fit "
                        "(default: 1e-10; raise it, e.g. to 1e-6, when coarse meshes give huge coefficients)")


def run(args):
    from ..preprocess import FitSettings, fit_basis, format_summary

    from ..errors import InputError
    from ..gridfit import DEFAULT_RCOND

    if args.rcond is not None and not 0 < args.rcond < 1:
        raise InputError(f"--rcond must lie in (0, 1), got {args.rcond}")
    settings = FitSettings(auxbasis=args.auxbasis, metric=args.metric, constrain=not args.no_constraint,
                           floor_grid_level=-1 if args.no_floors else args.floor_grid_level, xc=args.xc,
                           periodic_rcond=DEFAULT_RCOND if args.rcond is None else float(args.rcond))
    summary = fit_basis(args.chk, args.out, settings, workers=args.workers, shard=args.shard,
                        overwrite=args.overwrite, progress=not args.quiet, keep_going=args.keep_going)
    print(format_summary(summary))
    return 0
