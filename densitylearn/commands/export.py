"""Write a slim, shareable model file from a training checkpoint (EMA weights, no optimiser)."""

HELP = "write a slim, shareable model file from a training checkpoint"


def add_arguments(p):
    p.add_argument("checkpoint", help="checkpoint written by `densitylearn train` (RUN/best.pt)")
    p.add_argument("out", help="model file to write (.pt); load it with densitylearn.load_model(OUT)")
    p.add_argument("--card", metavar="JSON", help="model card to embed (JSON file: training data, metrics, ...)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="cast the weights (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args):
    import json
    import os

    from ..errors import InputError
    from ..train import export_model

    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(f"{args.out}: exists; pass --overwrite to replace it")
    card = None
    if args.card:
        try:
            with open(args.card) as fh:
                card = json.load(fh)
        except OSError as exc:
            raise InputError(f"{args.card}: cannot read model card ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{args.card}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(card, dict):
            raise InputError(f"{args.card}: the model card must be a JSON object")
    info = export_model(args.checkpoint, args.out, card=card, dtype=args.dtype)
    print(f"wrote {info['path']}: {info['parameters']} parameters, {info['bytes'] / 1e6:.2f} MB")
    return 0
