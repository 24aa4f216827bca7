"""Non-self-consistent properties from a model's predicted densities.

MODEL is a checkpoint (.pt) or a built-in model name; STRUCTURES are PySCF chkfiles
(*.chk: the reference's density matrix goes through the same one diagonalisation and the
errors are reported) or ASE-readable files. For each structure the predicted density (DCD:
plus the analytic SAED density matrix) builds one Kohn-Sham Fock matrix; one
diagonalisation gives the Harris-Foulkes energy (hartree), orbital energies and the
HOMO-LUMO gap (eV); the dipole moment (Debye) is that of the predicted density. The
functional and orbital basis default to the model's; asking for others is an error
unless --override. LDA/GGA functionals, closed-shell molecules.

--coulomb-steps N (molecules) first relaxes the predicted density's Coulomb potential: N
cheap steps, each a density-fitted Coulomb matrix and a diagonalisation with V_xc held at
the predicted density's, towards the density whose Hartree potential is self-consistent;
the properties above are then those of the relaxed density matrix. It removes the
amplified long-range Coulomb error of the one-shot route (gaps, dipoles) for about the
cost of a second diagonalisation; 8 is the measured choice (docs/properties.rst).

Periodic cells (a model trained on pyscf.pbc references; periodic chkfiles, POSCAR, CIF or
extxyz with a cell): the predicted valence density (DCD: plus the lattice-summed
pseudo-atom SAED) on the cell's FFT mesh gives the Kohn-Sham potential (FFT Hartree, G = 0
removed; libxc v_xc); one diagonalisation of h_core(k) + V(k) per k-point gives the band
energies, the band gap over the k-mesh (and the direct gap) and the Harris energy per atom.
A periodic chkfile brings its cell, FFT mesh and k-points and is compared with its density
matrices; other cells use --kmesh, --ke-cutoff and the model's pseudopotential. The JSON
output lists the band energies per k-point.
"""

HELP = "Harris energy, gap and dipole from predicted densities (one diagonalisation)"


def add_arguments(p):
    p.add_argument("model", metavar="MODEL", help="checkpoint file (.pt) or built-in model name")
    p.add_argument("structures", nargs="+", metavar="STRUCTURES",
                   help="PySCF chkfiles (*.chk, compared with the reference) or ASE-readable files")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write every property and error")
    p.add_argument("--xc", default=None, help="functional (default: the model's)")
    p.add_argument("--basis", default=None, help="orbital basis (default: the model's)")
    p.add_argument("--override", action="store_true",
                   help="allow a functional/basis (or reference) other than the model's")
    p.add_argument("--grid-level", type=int, default=3, help="PySCF grid level of the XC quadrature (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default: %(default)s)")
    p.add_argument("--forces", action="store_true",
                   help="also Harris forces (eV/A) by central differences of the Harris energy with the density "
                        "re-predicted at each displaced geometry (6 N evaluations per structure); compared "
                        "with the analytic forces of chkfile references")
    p.add_argument("--force-step", type=float, default=None, metavar="BOHR",
                   help="central-difference step in bohr (default: 2e-3)")
    p.add_argument("--kmesh", default=None, metavar="N1,N2,N3|length:L",
                   help="periodic structures without a chkfile: gamma-centred k-mesh, or length:L for "
                        "n_i = ceil(L / |a_i|) per cell, L in Angstrom (default: gamma point)")
    p.add_argument("--ke-cutoff", type=float, default=None, dest="ke_cutoff", metavar="HARTREE",
                   help="periodic structures without a chkfile: FFT-mesh cutoff (default: PySCF's)")
    p.add_argument("--pseudo", default=None,
                   help="periodic structures: pseudopotential (default and only allowed value: the model's)")
    p.add_argument("--smearing", type=float, default=None, metavar="HARTREE",
                   help="periodic structures: Fermi-Dirac width of the occupations (default: the chkfile's, "
                        "else 0); another value than a chkfile's needs --override")
    p.add_argument("--coulomb-steps", type=int, default=0, metavar="N",
                   help="molecules: first relax the predicted density's Coulomb potential by N cheap steps "
                        "(density-fitted J, V_xc held at the predicted density's), then evaluate the properties "
                        "at the relaxed density (densitylearn.properties.NSCF_COULOMB_STEPS, 8, is the measured "
                        "choice; default: 0, one diagonalisation of the prediction)")
    p.add_argument("--quiet", action="store_true", help="print the summary only")


def run(args):
    from ..predict import load_model, read_inputs
    from ..properties import format_nscf, nscf_predictions, resolve_settings, write_json

    from ..errors import InputError

    if args.coulomb_steps < 0:
        raise InputError(f"--coulomb-steps must be >= 0, got {args.coulomb_steps}")
    if args.coulomb_steps and args.forces:
        raise InputError("--forces are those of the one-shot Harris energy; drop --coulomb-steps to compute them")
    predictor = load_model(args.model, device=args.device)
    xc, basis = resolve_settings(predictor.xc, predictor.orbital_basis, args.xc, args.basis, args.override,
                                 context=f"model {args.model}")
    structures = predictor.check(read_inputs(args.structures))
    cells = [s for s in structures if s.is_periodic]
    if args.coulomb_steps and cells:  # before any structure is computed
        raise InputError(f"{cells[0].source or cells[0].label}: structure {cells[0].label} is periodic; "
                         "--coulomb-steps is for molecules only")
    if args.pseudo is not None:
        predictor.check_pseudo(args.pseudo, "--pseudo")
    if args.kmesh is not None:
        from ..reference import check_kmesh

        check_kmesh(args.kmesh)
    if args.ke_cutoff is not None and not args.ke_cutoff > 0:
        raise InputError(f"--ke-cutoff must be > 0 hartree, got {args.ke_cutoff}")
    if args.smearing is not None:
        from ..reference import check_smearing

        check_smearing(args.smearing)
    from ..properties import FORCE_STEP_BOHR

    step = FORCE_STEP_BOHR if args.force_step is None else args.force_step
    if args.forces and not step > 0:
        raise InputError(f"--force-step must be > 0 bohr, got {step}")
    report = nscf_predictions(predictor.iter_predict(structures, checked=True), xc, basis,
                              grid_level=args.grid_level, override=args.override,
                              forces_from=predictor.predict if args.forces else None, force_step=step,
                              pseudo=getattr(predictor, "pseudo", "") or None, kmesh=args.kmesh,
                              ke_cutoff=args.ke_cutoff, smearing=args.smearing, coulomb_steps=args.coulomb_steps)
    report["settings"]["model"] = predictor.checkpoint
    report["settings"]["target"] = predictor.target
    text = format_nscf(report)
    print(text if not args.quiet else text.splitlines()[-1])
    several = [e["name"] for e in report["structures"] if e.get("n_fragments", 1) > 1]
    if several and not args.coulomb_steps:
        import sys

        from ..properties import NSCF_COULOMB_STEPS

        print(f"note: {len(several)} structure(s) ({several[0]}{', ...' if len(several) > 1 else ''}) hold "
              "several molecules; their one-shot gaps and dipoles hinge on the intermolecular polarization "
              f"of the predicted density: --coulomb-steps {NSCF_COULOMB_STEPS} computes it (docs/properties.rst, "
              "'Coulomb-relaxed properties')", file=sys.stderr)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
