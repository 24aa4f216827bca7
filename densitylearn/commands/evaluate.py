"""Density errors (eps_mae) of a coefficient file against the reference DFT densities.

Takes a fit-basis dataset (reports the basis's fitting floor) or a prediction file (same
schema; reports the model's error). eps_mae = 100 % * int |rho_hat - rho_ref| / int rho_ref
on a Becke grid, against the exact density of each reference chkfile's density matrix.
Prints a per-structure table and a summary (mean, median, 5/95 percentiles, per element,
DCD-vs-TCD relative gain); --json writes everything, --plots writes PNG figures.
"""

HELP = "eps_mae of fitted or predicted densities against the references"


def add_arguments(p):
    p.add_argument("coefficients", metavar="COEFFS.h5", help="fit-basis dataset or prediction file")
    p.add_argument("--reference", nargs="+", metavar="CHK", default=None,
                   help="reference chkfiles, matched by file stem = structure name "
                        "(default: the paths stored in the file)")
    p.add_argument("--grid-level", type=int, default=3, help="Becke grid level (default: %(default)s)")
    p.add_argument("--auxbasis", default=None,
                   help="auxiliary basis you expect the file to use (an error if it differs)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the full report")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--cube", default=None, metavar="DIR",
                   help="also write total, difference and error density cube files into DIR")
    p.add_argument("--cube-spacing", type=float, default=0.2, help="cube grid spacing, bohr (default: %(default)s)")
    p.add_argument("--cube-margin", type=float, default=4.0, help="cube box margin, bohr (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N structures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    from ..evaluate import evaluate_file, format_report, write_cubes, write_json, write_plots

    report = evaluate_file(args.coefficients, references=args.reference, grid_level=args.grid_level,
                           expect_auxbasis=args.auxbasis, progress=not args.quiet, limit=args.limit)
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.cube:
        n = write_cubes(args.coefficients, args.cube, references=args.reference, spacing=args.cube_spacing,
                        margin=args.cube_margin, limit=args.limit)
        print(f"wrote {n} cube files into {args.cube}")
    if args.plots:
        for path in write_plots(report, args.plots):
            print(f"wrote {path}")
    return 0
