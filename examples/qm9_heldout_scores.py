"""Score QM9 models on the held-out sample, incrementally and in shards
=======================================================================

Usage::

    python examples/qm9_heldout_scores.py --work qm9bench --models qm9-tcd,qm9-dcd \\
        [--test 120000-133885:500] [--max-test M] [--shard i/n] [--chunk 8] [--report]

The held-out sample is the one :mod:`qm9_delta_saed_benchmark` draws (same ``--test`` and
seed), and its reference chkfiles are ``WORK/refs_test/qm9_<index>.chk``; molecules whose
chkfile is not there yet are left for a later run. Each model predicts the molecules and
the predictions are scored against the exact reference density on a level-3 Becke grid
(:func:`densitylearn.evaluate.evaluate_file`). The models of one chunk share the grid and
reference density, so scoring a TCD/DCD pair costs little more than scoring one.

One JSON line per molecule and model goes to ``WORK/heldout_scores/<model>.<i>of<n>.jsonl``
as soon as its chunk is scored: a killed run loses at most one chunk, a rerun continues,
and ``--shard i/n`` processes (molecule k belongs to shard k % n) can run side by side;
each takes its share of the CPU cores (``--threads``, default cores / n), so n shards do
not oversubscribe the machine. ``--report`` merges every shard and prints the table over
the molecules every model scored: mean and median eps_mae, the fraction on which the last
model beats the first, exact per-element eps_mae (from the integrated errors), and the
fitting floors where the benchmark's test dataset has them. Molecules with elements a
model never saw are counted and skipped, never scored with garbage.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def label(model: str) -> str:
    """A model's name in file names and tables: the built-in name, or a file's stem."""
    return os.path.basename(model).removesuffix(".pt")


def shard_rows(folder: str, model: str) -> dict:
    """name -> row, merged over every shard file of ``model`` (a torn last line is skipped)."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(folder, f"{label(model)}.*.jsonl"))):
        with open(path) as fh:
            for line in fh:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                rows[r["name"]] = r
    return rows


def shard_spec(spec: str) -> str:
    """argparse type of ``--shard``: ``i/n`` with 0 <= i < n."""
    i, _, n = spec.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected i/n with 0 <= i < n, e.g. 0/2")
    return spec


def positive(text: str) -> int:
    """argparse type of ``--threads``: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return int(text)


def score(args, sample, models) -> None:
    from ase.data import atomic_numbers

    from densitylearn.evaluate import evaluate_file
    from densitylearn.predict import load_model, predict_files
    from densitylearn.structure import structure_from_chk

    i_shard, n_shard = (int(x) for x in args.shard.split("/"))
    folder = os.path.join(args.work, "heldout_scores")
    os.makedirs(folder, exist_ok=True)
    allowed = {m: set(load_model(m, device="cpu").elements) for m in models}
    done = {m: set(shard_rows(folder, m)) for m in models}
    mine = [i for k, i in enumerate(sample) if k % n_shard == i_shard]
    todo = []
    for i in mine:
        chk = os.path.join(args.work, "refs_test", f"qm9_{i:06d}.chk")
        name = f"qm9_{i:06d}"
        if not os.path.isfile(chk) or all(name in done[m] for m in models):
            continue
        todo.append((name, chk, {int(z) for z in structure_from_chk(chk).numbers}))
    print(f"shard {args.shard}: {len(todo)} molecules to score", flush=True)
    for c0 in range(0, len(todo), args.chunk):
        chunk = todo[c0:c0 + args.chunk]
        for m in models:
            out = os.path.join(folder, f"{label(m)}.{i_shard}of{n_shard}.jsonl")
            with open(out, "a") as fh:
                skipped = [(n, z) for n, _, z in chunk if not z <= allowed[m] and n not in done[m]]
                for n, z in skipped:
                    fh.write(json.dumps({"name": n, "skipped": "elements " + " ".join(
                        sorted(k for k, v in atomic_numbers.items() if v in z - allowed[m]))}) + "\n")
                    done[m].add(n)
                run = [c for n, c, z in chunk if z <= allowed[m] and n not in done[m]]
                if not run:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    pred = os.path.join(tmp, "pred.h5")
                    predict_files(m, run, pred, device="cpu", progress=False)
                    report = evaluate_file(pred, progress=False)
                target = report["targets"][0]
                key = "total" if target == "TCD" else "difference"
                for r in report["structures"]:
                    fh.write(json.dumps({"name": r["name"], "n_atoms": r["n_atoms"], "target": target,
                                         "eps_mae": r[f"eps_mae_{key}"],
                                         "per_element": r[f"per_element_{key}"]}) + "\n")
                    done[m].add(r["name"])
                fh.flush()
                os.fsync(fh.fileno())
        print(f"shard {args.shard}: {min(c0 + args.chunk, len(todo))}/{len(todo)} scored", flush=True)


def report(args, sample, models) -> dict:
    import numpy as np

    from densitylearn.data import CoefficientDataset

    folder = os.path.join(args.work, "heldout_scores")
    names = [f"qm9_{i:06d}" for i in sample]
    rows = {m: shard_rows(folder, m) for m in models}
    scored = [n for n in names if all(n in rows[m] and "eps_mae" in rows[m][n] for m in models)]
    skipped = [n for n in names if any(n in rows[m] and "skipped" in rows[m][n] for m in models)]
    pending = len(names) - len(scored) - len(skipped)
    out = {"sample": args.test, "molecules": len(names), "scored": len(scored), "skipped_elements": len(skipped),
           "pending": pending, "models": {}}
    labels = [label(m) for m in models]
    for m, lab in zip(models, labels):
        e = np.array([rows[m][n]["eps_mae"] for n in scored])
        acc = {}
        for n in scored:
            for el, (err, ref) in rows[m][n]["per_element"].items():
                a = acc.setdefault(el, [0.0, 0.0])
                a[0] += err
                a[1] += ref
        out["models"][lab] = {"mean": float(e.mean()) if len(e) else float("nan"),
                              "median": float(np.median(e)) if len(e) else float("nan"),
                              "per_element": {el: 100.0 * a / b for el, (a, b) in sorted(acc.items())},
                              "eps": e.tolist()}
    if len(models) >= 2 and scored:
        first, last = (np.array(out["models"][lab]["eps"]) for lab in (labels[0], labels[-1]))
        out["last_better_fraction"] = float(np.mean(last < first))
    floors = {}
    for path in sorted(glob.glob(os.path.join(args.work, "test_*.h5"))):
        ds = CoefficientDataset(path)
        for n, t, d in zip(ds.column("name"), ds.column("eps_mae_total"), ds.column("eps_mae_difference")):
            floors[str(n)] = (float(t), float(d))
    with_floor = [n for n in scored if n in floors]
    if with_floor:
        out["floor"] = {"molecules": len(with_floor),
                        "TCD": float(np.mean([floors[n][0] for n in with_floor])),
                        "DCD": float(np.mean([floors[n][1] for n in with_floor]))}
    print(f"held-out sample {args.test}: {len(names)} molecules; {len(scored)} scored by every model, "
          f"{len(skipped)} skipped (elements outside a model), "
          f"{pending} pending (no reference or not scored yet)")
    print("| model | mean eps_mae % | median % | " + " | ".join(
        sorted({el for lab in labels for el in out["models"][lab]["per_element"]})) + " |")
    els = sorted({el for lab in labels for el in out["models"][lab]["per_element"]})
    print("|---|---|---|" + "---|" * len(els))
    for lab in labels:
        r = out["models"][lab]
        print(f"| {lab} | {r['mean']:.3f} | {r['median']:.3f} | "
              + " | ".join(f"{r['per_element'].get(el, float('nan')):.2f}" for el in els) + " |")
    if "last_better_fraction" in out:
        print(f"{labels[-1]} better than {labels[0]} on {100 * out['last_better_fraction']:.1f} % of them")
    if "floor" in out:
        print(f"fitting floor on the {out['floor']['molecules']} of them with floors: "
              f"TCD {out['floor']['TCD']:.3f} %, DCD {out['floor']['DCD']:.3f} %")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--models", default="qm9-tcd,qm9-dcd", help="built-in names or checkpoint files")
    p.add_argument("--test", default="120000-133885:500")
    p.add_argument("--seed", type=int, default=0, help="the benchmark's seed (the test sample uses seed + 1)")
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--shard", default="0/1", type=shard_spec, help="i/n: score molecules k with k %% n == i")
    p.add_argument("--chunk", type=int, default=8, help="molecules per prediction file")
    p.add_argument("--threads", type=positive, default=None,
                   help="OpenMP/BLAS/torch threads of this process (default: CPU cores / n of --shard i/n, "
                        "at least 1; an OMP_NUM_THREADS already set is kept)")
    p.add_argument("--report", action="store_true", help="merge the shards and print the table (no scoring)")
    p.add_argument("--json", default=None, help="where --report writes its JSON (WORK/heldout_scores/report.json)")
    args = p.parse_args()
    # shards run side by side: more threads than cores made scoring 3x slower on 2 cores
    # (OpenMP workers spinning against each other). Set before numpy and torch load.
    threads = args.threads or max(1, (os.cpu_count() or 1) // int(args.shard.split("/")[1]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if args.threads:  # asked for: overrides the environment
            os.environ[var] = str(threads)
        else:
            os.environ.setdefault(var, str(threads))
    from qm9_delta_saed_benchmark import existing, sample as draw

    from densitylearn.errors import DensityLearnError

    test = existing(*draw(args.test, args.seed + 1))[:args.max_test]
    models = args.models.split(",")
    try:
        if args.report:
            out = report(args, test, models)
            path = args.json or os.path.join(args.work, "heldout_scores", "report.json")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path + ".tmp", "w") as fh:  # atomic: an earlier report survives a crash
                json.dump(out, fh, indent=1)
            os.replace(path + ".tmp", path)
        else:
            score(args, test, models)
    except DensityLearnError as exc:  # an unknown model name, an unreadable chkfile: one line
        sys.exit(f"qm9_heldout_scores: {exc}")


if __name__ == "__main__":
    main()
