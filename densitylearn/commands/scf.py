"""SCF with the model's density as the initial guess, against PySCF's guesses.

For each structure the predicted density gives one Kohn-Sham Fock matrix whose
diagonalisation is the initial density matrix; a restricted KS SCF (PySCF defaults
otherwise) runs from it and from each of PySCF's guesses (--guesses). Reported per guess:
iterations, wall time (ours includes making the guess) and convergence. DIIS extrapolates
from the first cycle of the run from our guess (--diis-start-cycle; PySCF's default
starts one cycle later, which overshoots from a guess near convergence). A run that does
not converge is rerun from minao and both are reported. Before the SCF, the guess mixes
its way from the predicted density towards self-consistency with a cheap Hamiltonian
(density-fitted Coulomb matrix, coarse XC grid, Pulay-extrapolated): --guess-coulomb-steps
steps that update the Coulomb matrix alone around each of --guess-mixing-steps steps that
also rebuild V_xc (both 0: the one-shot output itself). The functional and orbital basis
default to the model's; others are an error unless --override.
"""

HELP = "SCF iterations and time from the model's guess vs PySCF's guesses"


def add_arguments(p):
    p.add_argument("structures", nargs="+", metavar="STRUCTURES",
                   help="PySCF chkfiles (*.chk) or ASE-readable structure files")
    p.add_argument("--model", required=True, metavar="M", help="checkpoint file (.pt) or built-in model name")
    p.add_argument("--guesses", nargs="*", default=["minao", "atom", "huckel", "sap"],
                   help="PySCF guesses to compare with (default: %(default)s; none: ours only)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write every run")
    p.add_argument("--xc", default=None, help="functional (default: the model's)")
    p.add_argument("--basis", default=None, help="orbital basis (default: the model's)")
    p.add_argument("--override", action="store_true", help="allow a functional/basis other than the model's")
    p.add_argument("--grid-level", type=int, default=3, help="PySCF grid level (default: %(default)s)")
    p.add_argument("--conv-tol", type=float, default=1e-9, help="SCF energy convergence, hartree (default: 1e-9)")
    p.add_argument("--max-cycle", type=int, default=50, help="maximum SCF iterations (default: 50)")
    p.add_argument("--diis-start-cycle", type=int, default=0, metavar="N",
                   help="DIIS start cycle of the SCF from the model's guess (default: %(default)s, extrapolate "
                        "from the first cycle; PySCF's default is 1)")
    p.add_argument("--guess-mixing", type=float, default=None, metavar="A",
                   help="weight of the one-shot output density in the guess's mixing step, 0-1 (default: "
                        "densitylearn.properties.GUESS_MIXING, 0.5; 0: no mixing steps)")
    p.add_argument("--guess-mixing-steps", type=int, default=None, metavar="K",
                   help="mixing steps of the guess that rebuild V_xc on its grid (default: "
                        "densitylearn.properties.GUESS_MIXING_STEPS)")
    p.add_argument("--guess-coulomb-steps", type=int, default=None, metavar="M",
                   help="Coulomb-only mixing steps of the guess before each mixing step and after the last "
                        "(default: densitylearn.properties.GUESS_COULOMB_STEPS; with --guess-mixing-steps 0: "
                        "0 gives the one-shot output density matrix)")
    p.add_argument("--pyscf-diis-start-cycle", type=int, default=None, metavar="N",
                   help="DIIS start cycle of the runs from PySCF's guesses (default: PySCF's, 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print the summary only")


def run(args):
    from ..errors import InputError
    from ..predict import load_model, read_inputs
    from ..properties import (GUESS_COULOMB_STEPS, GUESS_MIXING, GUESS_MIXING_STEPS, format_runs,
                              resolve_settings, scf_predictions, write_json)

    for flag, value in (("--diis-start-cycle", args.diis_start_cycle),
                        ("--pyscf-diis-start-cycle", args.pyscf_diis_start_cycle)):
        if value is not None and value < 0:
            raise InputError(f"{flag} must be >= 0, got {value}")
    mixing = GUESS_MIXING if args.guess_mixing is None else args.guess_mixing
    if not 0.0 <= mixing <= 1.0:
        raise InputError(f"--guess-mixing must be between 0 and 1, got {mixing}")
    steps = GUESS_MIXING_STEPS if args.guess_mixing_steps is None else args.guess_mixing_steps
    if steps < 0:
        raise InputError(f"--guess-mixing-steps must be >= 0, got {steps}")
    coulomb = GUESS_COULOMB_STEPS if args.guess_coulomb_steps is None else args.guess_coulomb_steps
    if coulomb < 0:
        raise InputError(f"--guess-coulomb-steps must be >= 0, got {coulomb}")
    predictor = load_model(args.model, device=args.device)
    xc, basis = resolve_settings(predictor.xc, predictor.orbital_basis, args.xc, args.basis, args.override,
                                 context=f"model {args.model}")
    structures = predictor.check(read_inputs(args.structures))

    def show(entry, runs):
        if not args.quiet:
            print(format_runs(runs, entry["name"]), flush=True)

    report = scf_predictions(predictor.iter_predict(structures, checked=True), xc, basis,
                             guesses=tuple(args.guesses), grid_level=args.grid_level, conv_tol=args.conv_tol,
                             max_cycle=args.max_cycle, progress=show, guess_diis_start_cycle=args.diis_start_cycle,
                             pyscf_diis_start_cycle=args.pyscf_diis_start_cycle, guess_mixing=mixing,
                             guess_mixing_steps=steps, guess_coulomb_steps=coulomb)
    report["settings"]["model"] = predictor.checkpoint
    s = report["summary"]
    parts = [f"{g}: {v['mean_iterations']:.1f} it, {v['mean_wall_s']:.2f} s"
             + (f", {v['not_converged']} not converged" if v["not_converged"] else "")
             for g, v in s.items() if isinstance(v, dict)]
    red = f"; {100 * s['reduction_vs_minao']:.0f} % fewer iterations than minao" if "reduction_vs_minao" in s else ""
    print(f"mean over {len(report['structures'])} structures: " + "; ".join(parts) + red)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
