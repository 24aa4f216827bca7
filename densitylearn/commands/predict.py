"""Predict densities of structures with a trained model and write a prediction file.

MODEL is a checkpoint (.pt, e.g. RUN/best.pt; EMA weights are used) or a built-in model
name. STRUCTURES are PySCF chkfiles (*.chk; the prediction records the chkfile as the
structure's reference, so `densitylearn evaluate PRED.h5` compares against it) or any
ASE-readable file (xyz, extxyz, sdf, cif, ...; all frames; Angstrom as ASE reads it).
Every structure is checked before the model runs: elements outside the model, charged
or open-shell structures for a neutral closed-shell model and unreadable files are
errors. The output uses the coefficient-dataset schema (coefficients in PySCF order;
positions bohr); with --cube, density cube files (bohr, e/bohr^3) are written too.

Periodic cells (POSCAR, CIF, extxyz with a lattice, periodic chkfiles) need a model trained
on cells (and a molecule a model trained on molecules); --cube then writes the cell's
lattice-summed density as a cube file and a VASP CHGCAR on the cell's own grid
(--cube-spacing; --cube-margin does not apply), and `densitylearn evaluate` scores the
prediction file on the reference's FFT mesh.
"""

HELP = "predict density coefficients (and cube files) with a trained model"


def add_arguments(p):
    p.add_argument("model", metavar="MODEL", help="checkpoint file (.pt) or built-in model name")
    p.add_argument("structures", nargs="+", metavar="STRUCTURES",
                   help="PySCF chkfiles (*.chk) or ASE-readable structure files")
    p.add_argument("--out", required=True, metavar="PRED.h5", help="prediction file to write")
    p.add_argument("--cube", default=None, metavar="DIR",
                   help="also write total (and for DCD difference) density cube files into DIR")
    p.add_argument("--cube-spacing", type=float, default=0.2, help="cube grid spacing, bohr (default: %(default)s)")
    p.add_argument("--cube-margin", type=float, default=4.0, help="cube box margin, bohr (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default: %(default)s = CUDA when available)")
    p.add_argument("--batch-size", type=int, default=64, dest="batch_size",
                   help="structures per forward pass (default: %(default)s)")
    p.add_argument("--backend", choices=("e3nn", "cueq"), default="e3nn",
                   help="tensor-product library (default: %(default)s; cueq = NVIDIA cuEquivariance, same results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    from ..predict import predict_files

    s = predict_files(args.model, args.structures, args.out, cube=args.cube, device=args.device,
                      batch_size=args.batch_size, progress=not args.quiet, cube_spacing=args.cube_spacing,
                      cube_margin=args.cube_margin, backend=args.backend)
    rate = s["n"] / s["seconds"] if s["seconds"] > 0 else float("inf")
    label = {"difference": "DCD", "total": "TCD"}[s["target"]]
    cubes = f"; {s['cubes']} cube files in {args.cube}" if args.cube else ""
    print(f"predicted {s['n']} structures ({label}, {s['device']}, {s['seconds']:.1f} s, {rate:.1f}/s); "
          f"wrote {args.out}{cubes}")
    return 0
