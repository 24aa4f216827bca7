"""Run PySCF Kohn-Sham reference calculations, one chkfile per structure (OUT/<name>.chk).

Structures come from ASE-readable files (every frame of multi-frame xyz/extxyz/sdf; names
STEM or STEM_FRAME) and/or QM9 indices (names qm9_000123). Closed shells run restricted
KS, open shells unrestricted. Periodic structures (CIF, POSCAR, extxyz with a lattice and
pbc) run pyscf.pbc restricted KS with GTH pseudopotentials (gth-dzvp / gth-pbe by
default) at the gamma point or on a --kmesh. Every input is validated before any SCF starts; one bad
structure aborts the run. Existing chkfiles are skipped, so a killed run resumes; an
unconverged SCF is kept as OUT/<name>.unconverged.chk and reported. --guess MODEL starts
each molecule's SCF from a trained model's density (fewer SCF cycles; an SCF that does not
converge from it is rerun from PySCF's minao guess and reported). Exit status: 0 when
everything converged, 1 when some structure failed or did not converge, 2 on bad input.
"""

from __future__ import annotations

HELP = "PySCF reference DFT calculations (chkfiles) for structures or QM9 molecules"


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="ASE-readable structure files (xyz, extxyz, sdf, ...)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder for the chkfiles (created if missing)")
    parser.add_argument("--qm9", metavar="RANGE",
                        help="QM9 molecules by index, e.g. 1-1000,120000-120049 "
                             "(needs densitylearn[qm9]; >= 120000 is the held-out range)")
    parser.add_argument("--xc", default="pbe", help="exchange-correlation functional (default: pbe)")
    parser.add_argument("--basis", default=None,
                        help="orbital basis (default: def2-svp for molecules, gth-dzvp for cells)")
    parser.add_argument("--pseudo", default="gth-pbe",
                        help="pseudopotential of periodic structures (default: gth-pbe)")
    parser.add_argument("--kmesh", default="1,1,1", metavar="N1,N2,N3|length:L",
                        help="k-point mesh of periodic structures, e.g. 2,2,2 (default: 1,1,1, "
                             "gamma point), or length:L for n_i = ceil(L / |a_i|) per cell "
                             "(L in Angstrom; about the same k-point density for every cell)")
    parser.add_argument("--ke-cutoff", type=float, default=None, metavar="HARTREE",
                        help="kinetic-energy cutoff of the FFT mesh of periodic structures "
                             "(default: PySCF's, from the basis)")
    parser.add_argument("--smearing", type=float, default=0.0, metavar="HARTREE",
                        help="Fermi-Dirac smearing width of periodic structures, hartree (default: 0, "
                             "integer occupations; metals need e.g. 0.005)")
    parser.add_argument("--no-ksymmetry", action="store_true",
                        help="periodic SCF on every k-point of the mesh instead of the irreducible "
                             "ones (space group and time reversal)")
    parser.add_argument("--multigrid", action="store_true",
                        help="periodic Coulomb and XC by PySCF's multigrid integration: about 2x faster "
                             "on 1-2 atom cells, slower on 8-atom ones; energies within about 1e-7 "
                             "hartree per atom of the default FFT path")
    parser.add_argument("--charge", type=int, default=None,
                        help="net charge for every structure (default: from the file's info, else 0)")
    parser.add_argument("--spin", type=int, default=None,
                        help="2S for every structure (default: from the file's info, else the "
                             "lowest spin for the electron count)")
    parser.add_argument("--grid-level", type=int, default=3,
                        help="PySCF Becke grid level 0-9 (default: 3)")
    parser.add_argument("--conv-tol", type=float, default=1e-9,
                        help="SCF energy convergence, hartree (default: 1e-9, PySCF's)")
    parser.add_argument("--max-cycle", type=int, default=50,
                        help="maximum SCF iterations (default: 50, PySCF's)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="parallel processes; each uses cores//N threads (default: 1)")
    parser.add_argument("--shard", metavar="i/n", default=None,
                        help="compute only structures k with k %% n == i (cluster job arrays)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda runs through gpu4pyscf (pip install 'densitylearn[gpu]')")
    parser.add_argument("--guess", metavar="MODEL", default=None,
                        help="start each molecule's SCF from this model's predicted density (a "
                             "checkpoint or built-in name such as qm9-dcd) instead of PySCF's minao "
                             "guess: closed-shell molecules of the model's elements, functional and "
                             "basis; the chkfile records init_guess")
    parser.add_argument("--guess-override", action="store_true",
                        help="allow a --guess model trained on another functional or orbital basis")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute existing chkfiles whose settings differ from this run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import sys

    from ..errors import InputError
    from ..io_utils import parse_shard
    from ..reference import compute_references, format_summary, read_inputs
    from ..structure import parse_index_range, qm9_structures

    if not args.inputs and not args.qm9:
        raise InputError("give INPUT files and/or --qm9 RANGE")
    if args.grid_level < 0 or args.grid_level > 9:
        raise InputError(f"--grid-level must lie in 0..9, got {args.grid_level}")
    if args.max_cycle < 1:
        raise InputError(f"--max-cycle must be >= 1, got {args.max_cycle}")
    if not args.conv_tol > 0:
        raise InputError(f"--conv-tol must be positive, got {args.conv_tol}")
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    shard = parse_shard(args.shard)
    from ..reference import check_kmesh

    kmesh = check_kmesh(args.kmesh)
    if args.ke_cutoff is not None and not args.ke_cutoff > 0:
        raise InputError(f"--ke-cutoff must be positive, got {args.ke_cutoff}")

    structures = read_inputs(args.inputs, charge=args.charge, spin=args.spin)
    if args.qm9:
        mols = qm9_structures(parse_index_range(args.qm9))
        if args.charge is not None or args.spin is not None:
            import dataclasses

            mols = [dataclasses.replace(
                m, charge=m.charge if args.charge is None else args.charge,
                spin=(args.spin if args.spin is not None
                      else (int(m.numbers.sum()) - args.charge) % 2)) for m in mols]
        structures.extend(mols)

    guess = None
    if args.guess:
        from ..properties import ModelGuess
        from ..reference import DEFAULT_BASIS

        guess = ModelGuess(args.guess, args.xc, args.basis or DEFAULT_BASIS, device=args.device,
                           override=args.guess_override, override_flag="--guess-override")
    elif args.guess_override:
        raise InputError("--guess-override needs --guess MODEL")

    summary = compute_references(
        structures, args.out, xc=args.xc, basis=args.basis, grid_level=args.grid_level,
        conv_tol=args.conv_tol, max_cycle=args.max_cycle, device=args.device,
        workers=args.workers, shard=shard, overwrite=args.overwrite,
        progress=not args.no_progress, pseudo=args.pseudo, kmesh=kmesh, ke_cutoff=args.ke_cutoff,
        smearing=args.smearing, multigrid=args.multigrid, ksymmetry=not args.no_ksymmetry,
        initial_guess=guess)
    print(format_summary(summary), file=sys.stdout, flush=True)
    return 1 if summary["failed"] or summary["unconverged"] else 0
