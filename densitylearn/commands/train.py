"""Train an equivariant coefficient model (TCD or Delta-SAED DCD) on a fit-basis dataset.

Writes OUT/last.pt (every epoch), OUT/best.pt (best validation eps_mae, EMA weights) and
OUT/log.jsonl. Rerunning the same command resumes from OUT/last.pt. For several GPUs or
nodes, start it with torchrun (torchrun --nproc_per_node 4 -m densitylearn.cli train ...).
A config file (YAML or JSON) maps 1:1 onto the training settings, with the model's
settings under `model:`; command-line options override it.
"""

HELP = "train a coefficient model (TCD or DCD) on a fit-basis dataset"


def add_arguments(p):
    p.add_argument("data", metavar="DATA.h5", help="fit-basis dataset")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log)")
    p.add_argument("--target", choices=("difference", "total"), default=None,
                   help="difference = Delta-SAED DCD (default), total = TCD")
    p.add_argument("--config", default=None, help="YAML or JSON file with training and model settings")
    p.add_argument("--epochs", type=int, default=None, dest="max_epochs", help="maximum epochs")
    p.add_argument("--max-minutes", type=float, default=None, dest="max_minutes",
                   help="wall-clock budget: the learning rate anneals over it and training stops when it is spent")
    p.add_argument("--batch-size", type=int, default=None, dest="batch_size")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.01)")
    p.add_argument("--val-every", type=int, default=None, dest="val_every", metavar="N",
                   help="validate on the grid every N epochs and after the last (default 1)")
    p.add_argument("--loss", choices=("coulomb", "overlap", "mse"), default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--backend", choices=("e3nn", "cueq"), default=None,
                   help="tensor-product library (default e3nn; cueq = NVIDIA cuEquivariance, same results)")
    p.add_argument("--init-from", default=None, dest="init_from", metavar="MODEL",
                   help="fine-tune: start from this checkpoint or built-in model (same target, basis, SAED)")
    p.add_argument("--from-disk", action="store_false", default=None, dest="in_memory",
                   help="read each record from the HDF5 file at every step instead of holding the "
                        "dataset in memory (for files larger than the RAM)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args):
    from ..train import TrainConfig, train

    overrides = {k: getattr(args, k) for k in ("target", "max_epochs", "max_minutes", "batch_size", "lr",
                                                 "loss", "device", "seed", "backend", "init_from", "val_every",
                                                 "in_memory")}
    if args.config:
        config = TrainConfig.from_file(args.config, **overrides)
    else:
        config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    summary = train(args.data, args.out, config, progress=not args.quiet)
    print(f"trained {summary['epochs']} epochs ({summary['steps']} steps); best validation eps_mae "
          f"{summary['best_val_eps_mae']:.4f} %; checkpoints in {args.out}")
    return 0
