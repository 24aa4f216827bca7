"""Training: loss, checkpoints, exact resume, determinism, bad input, two-process DDP."""

import json
import os

import numpy as np
import pytest
import torch

from densitylearn import cli
from densitylearn.errors import InputError, MismatchError
from conftest import reweighted
from densitylearn.train import (TrainConfig, density_loss, load_checkpoint, model_from_checkpoint, train)

TINY_MODEL = {"num_layers": 1, "hidden_irreps": "8x0e+4x1o+2x2e+2x3o+2x4e", "sh_lmax": 4, "embedding_dim": 8, "num_radial": 4,
              "radial_hidden": 8}
CFG = dict(max_epochs=3, batch_size=1, val_fraction=0.34, val_structures=1, val_grid_level=1,
           warmup_steps=1, model=TINY_MODEL)


def test_coulomb_loss_is_the_coulomb_energy_of_the_error(water_scf):
    from densitylearn.basis import AuxBasis
    from densitylearn.fitting import structure_metric

    mol, _ = water_scf
    basis = AuxBasis.load("def2-universal-jfit", [1, 8])
    m = torch.as_tensor(structure_metric(basis, [8, 1, 1], mol.atom_coords(), "coulomb"))
    e = torch.randn(m.shape[0], dtype=torch.float64) * 1e-2
    loss = density_loss(e, torch.zeros_like(e), [0, len(e)], [m], torch.tensor([10.0], dtype=torch.float64))
    assert float(loss) == pytest.approx(float(e @ m @ e) / 10.0)
    assert float(loss) > 0  # the Coulomb metric is positive definite


def test_training_writes_safe_checkpoints_and_logs(fit_dataset, tmp_path):
    out = tmp_path / "run"
    summary = train(fit_dataset, str(out), TrainConfig.from_dict(CFG), progress=False)
    assert summary["epochs"] == 3
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert all(np.isfinite(x["val_eps_mae"]) and x["val_reference"] == "dft" for x in lines)
    ck = torch.load(out / "last.pt", weights_only=True)  # plain types and tensors only
    assert ck["model"]["target"] == "difference" and ck["saed"]
    # the grid-validated structures are recorded, so that a resumed run keeps them
    assert ck["grid_val"].tolist() == ck["split"]["val"].tolist()[:1]
    model = model_from_checkpoint(str(out / "best.pt"))
    from densitylearn.data import CoefficientDataset

    rec = CoefficientDataset(fit_dataset)[0]
    c = model.predict(rec["numbers"], rec["positions"])
    assert c.shape == rec["coef_total"].shape


def test_killed_run_resumes_as_if_never_stopped(fit_dataset, tmp_path):
    cfg = TrainConfig.from_dict(CFG)
    train(fit_dataset, str(tmp_path / "straight"), cfg, progress=False)

    def kill_after_first(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(fit_dataset, str(tmp_path / "killed"), cfg, progress=False, epoch_callback=kill_after_first)
    assert load_checkpoint(str(tmp_path / "killed" / "last.pt"))["epoch"] == 1
    train(fit_dataset, str(tmp_path / "killed"), cfg, progress=False)
    a = load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "killed" / "last.pt"))
    assert a["epoch"] == b["epoch"] == 3
    # bit-identical on CPU; CUDA's atomic scatter-adds sum in a varying order, so there the
    # resumed run agrees to float32 rounding (measured: 3e-8 after 3 epochs on an H200)
    tol = 1e-5 if torch.cuda.is_available() else 0.0
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=tol, atol=tol)
        torch.testing.assert_close(a["ema_state_dict"][k], b["ema_state_dict"][k], rtol=tol, atol=tol)


def test_grid_validation_is_spread_over_the_validation_split():
    from densitylearn.train import grid_validation_subset

    val = np.arange(10, 30)  # a sorted validation split; a merged dataset's newest part comes last
    assert grid_validation_subset(val, 4).tolist() == [10, 16, 23, 29]
    assert grid_validation_subset(val, 1).tolist() == [10]
    assert grid_validation_subset(val, 20).tolist() == grid_validation_subset(val, 50).tolist() == val.tolist()
    for n in range(1, 21):  # distinct structures, as many as asked for
        assert len(set(grid_validation_subset(val, n).tolist())) == n


def test_validation_every_few_epochs_and_after_the_last(fit_dataset, tmp_path):
    # validated epochs: multiples of val_every and the last one; the others log training only
    summary = train(fit_dataset, str(tmp_path / "run"), TrainConfig.from_dict(dict(CFG, val_every=2)),
                    progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert ["val_eps_mae" in x for x in lines] == [False, True, True]
    assert np.isfinite(summary["best_val_eps_mae"])
    assert load_checkpoint(str(tmp_path / "run" / "best.pt"))["epoch"] in (2, 3)
    # validation leaves weights, optimiser and random state alone: the same weights as
    # validating every epoch (bit-identical on CPU)
    train(fit_dataset, str(tmp_path / "every"), TrainConfig.from_dict(CFG), progress=False)
    a = load_checkpoint(str(tmp_path / "run" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "every" / "last.pt"))
    tol = 1e-5 if torch.cuda.is_available() else 0.0
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=tol, atol=tol)
    # patience counts epochs, not validations: with frozen weights (lr 0) nothing improves
    # after the first validation (epoch 2), so patience 2 stops at the next one (epoch 4)
    frozen = dict(CFG, max_epochs=20, lr=0.0, patience=2)
    assert train(fit_dataset, str(tmp_path / "v2"), TrainConfig.from_dict(dict(frozen, val_every=2)),
                 progress=False)["epochs"] == 4
    assert train(fit_dataset, str(tmp_path / "v1"), TrainConfig.from_dict(frozen), progress=False)["epochs"] == 3
    # a time budget spent after one epoch still validates that epoch
    cfg = TrainConfig.from_dict(dict(CFG, max_epochs=50, max_minutes=1e-4, val_every=10))
    assert np.isfinite(train(fit_dataset, str(tmp_path / "budget"), cfg, progress=False)["best_val_eps_mae"])
    with pytest.raises(InputError, match="val_every"):
        TrainConfig.from_dict(dict(CFG, val_every=0))


def test_records_from_memory_or_file_train_the_same_weights(fit_dataset, tmp_path):
    # in_memory (the default) only changes where the records come from
    cfgs = {mem: TrainConfig.from_dict(dict(CFG, max_epochs=2, in_memory=mem)) for mem in (True, False)}
    for mem, cfg in cfgs.items():
        train(fit_dataset, str(tmp_path / str(mem)), cfg, progress=False)
    a = load_checkpoint(str(tmp_path / "True" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "False" / "last.pt"))
    tol = 1e-5 if torch.cuda.is_available() else 0.0
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=tol, atol=tol)
    assert a["train_config"]["in_memory"] is True and b["train_config"]["in_memory"] is False
    # either may resume the other: where the records come from does not change the run
    assert train(fit_dataset, str(tmp_path / "False"), cfgs[True], progress=False)["epochs"] == 2
    # the command line reads from the file with --from-disk
    conf = tmp_path / "tiny.json"
    conf.write_text(json.dumps(dict(CFG, max_epochs=1)))
    assert cli.main(["train", fit_dataset, "--out", str(tmp_path / "cli"), "--config", str(conf),
                     "--from-disk", "--quiet"]) == 0
    assert load_checkpoint(str(tmp_path / "cli" / "last.pt"))["train_config"]["in_memory"] is False
    # checkpoints written before the field recorded a num_workers of 0 that never had an
    # effect: they still load; any other value is the usual unknown-key error
    assert TrainConfig.from_dict(dict(CFG, num_workers=0)) == TrainConfig.from_dict(CFG)
    with pytest.raises(InputError, match="num_workers"):
        TrainConfig.from_dict(dict(CFG, num_workers=2))


def test_time_budget_anneals_and_stops(fit_dataset, tmp_path):
    from densitylearn.train import _lr_lambda

    # the cosine decay follows whichever of steps and spent time is further along
    f = _lr_lambda(warmup=2, total=1000, time_frac=lambda: 0.5)
    assert f(0) == pytest.approx(0.5)  # warm-up is untouched
    assert f(10) == pytest.approx(0.02 + 0.98 * 0.5)  # half the budget spent: half-way down
    assert f(1000) == pytest.approx(0.02)  # steps further along than time
    assert _lr_lambda(2, 1000, lambda: 2.0)(10) == pytest.approx(0.02)
    # a budget far shorter than one epoch: one epoch runs, then the run stops long before
    # max_epochs and records the spent time; resuming a spent budget runs no further epoch
    cfg = TrainConfig.from_dict(dict(CFG, max_epochs=50, max_minutes=1e-4))
    summary = train(fit_dataset, str(tmp_path / "run"), cfg, progress=False)
    assert summary["epochs"] == 1 and summary["time_spent_s"] > 6e-3
    assert load_checkpoint(str(tmp_path / "run" / "last.pt"))["time_spent_s"] > 6e-3
    assert train(fit_dataset, str(tmp_path / "run"), cfg, progress=False)["epochs"] == 1
    with pytest.raises(InputError, match="max_minutes"):
        TrainConfig.from_dict(dict(CFG, max_minutes=0))


def test_total_target_and_bad_inputs(fit_dataset, tmp_path, capsys):
    cfg = dict(CFG, max_epochs=1, target="total")
    summary = train(fit_dataset, str(tmp_path / "tcd"), TrainConfig.from_dict(cfg), progress=False)
    assert summary["epochs"] == 1
    # resuming with other settings
    with pytest.raises(MismatchError, match="other settings"):
        train(fit_dataset, str(tmp_path / "tcd"), TrainConfig.from_dict(dict(cfg, lr=1.0)), progress=False)
    # unknown config key -> one-line CLI error
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1.0}))
    assert cli.main(["train", fit_dataset, "--out", str(tmp_path / "x"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rate" in err[0] and "bad.json" in err[0]
    with pytest.raises(InputError, match="too few"):
        from densitylearn.train import split_indices

        split_indices(1, 0.1, 0)


def test_learning_curve_subsets_are_random_nested_and_resume_old_runs(fit_dataset, tmp_path):
    from densitylearn.train import training_subset

    idx = np.arange(0, 2000, 2)  # a sorted training split (datasets are ordered by name)

    def pick(n, **kw):
        return training_subset(idx, TrainConfig.from_dict(dict(max_train_structures=n, **kw)))

    small, large = pick(100), pick(400)
    assert len(small) == 100 and len(set(small)) == 100 and set(small) <= set(idx)
    assert np.all(np.diff(small) > 0)
    assert set(small) <= set(large)  # nested learning-curve points
    np.testing.assert_array_equal(small, pick(100))  # seeded
    assert not np.array_equal(small, pick(100, seed=1))
    # uniform over the split, not its low end: mean position 0.5 (sd about 0.03 for 100 picks)
    assert 0.35 < np.mean(np.searchsorted(idx, small)) / len(idx) < 0.65
    np.testing.assert_array_equal(pick(100, train_subset="first"), idx[:100])
    np.testing.assert_array_equal(pick(5000), idx)  # more than the split: all of it
    np.testing.assert_array_equal(training_subset(idx, TrainConfig()), idx)
    for bad in (dict(train_subset="lowest"), dict(max_train_structures=0)):
        with pytest.raises(InputError):
            TrainConfig.from_dict(bad)
    # a checkpoint written before train_subset existed took the first N: resuming it with the
    # new default is refused by name, resuming with "first" goes on
    cfg = dict(CFG, max_epochs=1, max_train_structures=1)
    out = tmp_path / "old"
    train(fit_dataset, str(out), TrainConfig.from_dict(dict(cfg, train_subset="first")), progress=False)
    ck = torch.load(out / "last.pt", weights_only=True)
    del ck["train_config"]["train_subset"]
    torch.save(ck, out / "last.pt")
    with pytest.raises(MismatchError, match="train_subset"):
        train(fit_dataset, str(out), TrainConfig.from_dict(cfg), progress=False)
    summary = train(fit_dataset, str(out), TrainConfig.from_dict(dict(cfg, train_subset="first")), progress=False)
    assert summary["epochs"] == 1


def test_fine_tuning_starts_from_the_given_weights(fit_dataset, tmp_path, capsys):
    base = tmp_path / "base"
    train(fit_dataset, str(base), TrainConfig.from_dict(dict(CFG, max_epochs=2)), progress=False)
    start = load_checkpoint(str(base / "best.pt"))["ema_state_dict"]
    # a learning rate of 1e-30 leaves the weights where the run started: the checkpoint's
    # EMA weights (normalisation buffers included) with init_from, a fresh draw without
    tiny = dict(CFG, max_epochs=1, lr=1e-30)
    train(fit_dataset, str(tmp_path / "tuned"), TrainConfig.from_dict(dict(tiny, init_from=str(base / "best.pt"))),
          progress=False)
    train(fit_dataset, str(tmp_path / "fresh"), TrainConfig.from_dict(dict(tiny, seed=1)), progress=False)
    tuned = load_checkpoint(str(tmp_path / "tuned" / "last.pt"))["state_dict"]
    fresh = load_checkpoint(str(tmp_path / "fresh" / "last.pt"))["state_dict"]
    assert set(tuned) == set(start)
    for k, v in start.items():
        torch.testing.assert_close(tuned[k], v, rtol=0, atol=1e-6)
    assert any(not torch.allclose(fresh[k], v, atol=1e-3) for k, v in start.items() if v.is_floating_point())
    # a checkpoint that cannot start this run: other target, other architecture, no file
    with pytest.raises(MismatchError, match="cannot start a 'total' run"):
        train(fit_dataset, str(tmp_path / "t"), TrainConfig.from_dict(
            dict(tiny, target="total", init_from=str(base / "best.pt"))), progress=False)
    # a checkpoint whose SAED differs from the data's by round-off (computed on another
    # machine) starts the run; one whose SAED weights differ at 1e-6 does not
    ck = load_checkpoint(str(base / "best.pt"))
    for rel, name in ((1e-13, "roundoff.pt"), (1e-6, "other_saed.pt")):
        d = json.loads(ck["saed"])
        h = d["elements"]["1"]
        h["weights"] = reweighted(1, h["powers"], h["exponents"], h["weights"], rel).tolist()
        torch.save(dict(ck, saed=json.dumps(d)), tmp_path / name)
    train(fit_dataset, str(tmp_path / "r"), TrainConfig.from_dict(dict(tiny, init_from=str(tmp_path / "roundoff.pt"))),
          progress=False)
    with pytest.raises(MismatchError, match="SAED terms differ for H"):
        train(fit_dataset, str(tmp_path / "s"), TrainConfig.from_dict(
            dict(tiny, init_from=str(tmp_path / "other_saed.pt"))), progress=False)
    other = dict(TINY_MODEL, embedding_dim=16)
    with pytest.raises(MismatchError, match="architecture differs"):
        train(fit_dataset, str(tmp_path / "a"), TrainConfig.from_dict(
            dict(tiny, model=other, init_from=str(base / "best.pt"))), progress=False)
    assert cli.main(["train", fit_dataset, "--out", str(tmp_path / "m"), "--epochs", "1",
                     "--init-from", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt" in err[0]


def _ddp_worker(rank, world, data, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(data, out, TrainConfig.from_dict(dict(CFG, max_epochs=1, device="cpu")), progress=False)
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_data_parallel_training(fit_dataset, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    mp.spawn(_ddp_worker, args=(2, fit_dataset, out, port), nprocs=2, join=True)
    ck = load_checkpoint(os.path.join(out, "last.pt"))
    assert ck["epoch"] == 1
    # two ranks share one epoch: each took ceil(2 / (1 * 2)) = 1 step
    assert ck["step"] == 1


def test_training_ablation_script_scores_train_and_heldout(chks, fit_dataset, tmp_path, capsys):
    # examples/qm9_training_ablation.py end to end on the small molecules: a short run, the
    # training-set and held-out eps_mae from the real references, the Coulomb-norm error
    # against the fits (zero for the fits themselves), no retraining on a second call, a report
    from conftest import load_example

    mod = load_example("qm9_training_ablation")
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(os.path.dirname(chks[0]), work / "refs_train")
    os.symlink(os.path.dirname(chks[0]), work / "refs_test")
    assert mod.coulomb_error_per_electron(fit_dataset, fit_dataset) == [0.0, 0.0, 0.0]
    args = ["--work", str(work), "--data", fit_dataset, "--name", "tiny", "--epochs", "2",
            "--config", json.dumps({"val_structures": 1, "batch_size": 2, "model": TINY_MODEL}),
            "--max-test", "2", "--test-fit", fit_dataset]
    assert mod.main(args) == 0
    res = json.load(open(work / "ablation" / "tiny" / "result.json"))
    assert res["epochs"] == 2 and res["n_params"] > 0 and res["config"]["model"] == TINY_MODEL
    assert res["train"]["n"] == 2 and res["heldout"]["n"] == 2  # 3 molecules: 2 train, 1 validate
    assert all(0 < e < 200 for e in res["train_per_structure"] + res["heldout_per_structure"])
    assert res["heldout_coulomb_per_electron"]["mean"] > 0
    capsys.readouterr()
    assert mod.main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert mod.main(["--work", str(work), "--report"]) == 0
    assert "tiny" in capsys.readouterr().out
    # a learning-curve point: the training error covers only the molecules trained on
    curve = ["--work", str(work), "--data", fit_dataset, "--name", "one", "--epochs", "1", "--max-test", "1",
             "--config", json.dumps({"val_structures": 1, "max_train_structures": 1, "model": TINY_MODEL})]
    assert mod.main(curve) == 0
    res1 = json.load(open(work / "ablation" / "one" / "result.json"))
    assert res1["train"]["n"] == 1 and len(res1["train_per_structure"]) == 1
    with pytest.raises(SystemExit):
        mod.main(["--work", str(work), "--name", "x"])  # no --data
    with pytest.raises(SystemExit, match="no_such_key"):  # library errors end in one line
        mod.main(["--work", str(work), "--data", fit_dataset, "--name", "bad", "--config", '{"no_such_key": 1}'])
    os.remove(work / "refs_train")
    os.mkdir(work / "refs_train")
    with pytest.raises(SystemExit, match="training reference"):  # refused before any training
        mod.main(["--work", str(work), "--data", fit_dataset, "--name", "norefs"])
    assert not (work / "ablation" / "norefs").exists()
