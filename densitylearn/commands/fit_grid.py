"""Fit a density given on a uniform grid (Gaussian cube file or VASP CHGCAR) onto an
auxiliary basis and write a coefficient dataset (one structure).

Cube files are bohr and e/bohr^3 (molecular unless --pbc); a CHGCAR stores rho * V_cell in
Angstrom units and is converted to e/bohr^3, with lattice-summed basis functions. The fit is
weighted least squares on the grid points (volume element as weight); --difference also
fits rho - rho_SAED, the Delta-SAED training target. The residual on the grid (relative L1,
electron counts, largest error) is printed; the dataset is written atomically.
"""

HELP = "fit a cube/CHGCAR grid density onto an auxiliary basis (coefficient dataset)"


def add_arguments(p):
    p.add_argument("file", metavar="FILE", help="density grid: .cube/.cub file or VASP CHGCAR/CHG")
    p.add_argument("--basis", "--auxbasis", dest="basis", required=True,
                   help="auxiliary basis: PySCF name, etb:BETA, shipped name or NWChem file")
    p.add_argument("--out", required=True, help="output coefficient dataset (.h5)")
    p.add_argument("--format", choices=("cube", "chgcar"), default=None,
                   help="grid format (default: from the file name)")
    p.add_argument("--pbc", action="store_true",
                   help="treat a cube file as one periodic cell (CHGCAR always is)")
    p.add_argument("--structure", default=None, metavar="FILE",
                   help="structure file the grid's atoms must match (any ASE-readable format)")
    p.add_argument("--difference", action="store_true",
                   help="also fit rho - rho_SAED (Delta-SAED target); records the SAED")
    p.add_argument("--xc", default="pbe", help="functional of the SAED atoms (default: %(default)s)")
    p.add_argument("--ref-basis", default="def2-svp",
                   help="orbital basis of the SAED atoms and of etb:BETA (default: %(default)s)")
    p.add_argument("--pseudo", default=None, metavar="NAME",
                   help="SAED of pseudo-atoms with this GTH pseudopotential (e.g. gth-pbe, with a GTH "
                        "--ref-basis such as gth-dzvp) for valence densities of GTH references; "
                        "--electrons auto then counts valence electrons")
    p.add_argument("--electrons", default=None, metavar="N|auto",
                   help="constrain the fit to N electrons ('auto': sum(Z) - charge, all-electron "
                        "densities only; a VASP valence density needs NELECT)")
    p.add_argument("--total-fit", choices=("auto", "saed", "grid"), default="auto",
                   help="with --difference: the total density as the difference fit plus the SAED's "
                        "Coulomb fit ('saed', the default 'auto' on molecular all-electron grids: the core "
                        "stays analytic) or its own least squares on the grid ('grid')")
    p.add_argument("--charge", type=int, default=0, help="net charge recorded with the structure")
    p.add_argument("--spin", type=int, default=None, help="2S recorded with the structure")
    p.add_argument("--rcond", type=float, default=None,
                   help="relative eigenvalue cut for directions the grid cannot resolve (default: 1e-10)")
    p.add_argument("--device", default=None, help="torch device for basis values (default: cpu)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args):
    import json

    from ..gridfit import DEFAULT_RCOND, fit_grid_file, format_report
    from ..io_utils import atomic_path

    _, report = fit_grid_file(args.file, args.basis, args.out, fmt=args.format,
                              pbc=True if args.pbc else None, structure=args.structure,
                              difference=args.difference, xc=args.xc, ref_basis=args.ref_basis,
                              electrons=args.electrons, charge=args.charge, spin=args.spin,
                              rcond=DEFAULT_RCOND if args.rcond is None else args.rcond,
                              device=args.device, overwrite=args.overwrite, pseudo=args.pseudo,
                              total_fit=args.total_fit)
    if args.json:
        with atomic_path(args.json, suffix=".json") as tmp:
            with open(tmp, "w") as fh:
                json.dump(report, fh, indent=2)
    print(format_report(report))
    return 0
