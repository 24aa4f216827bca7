"""The shipped pretrained pair: what the issue and the data rules promise about it.

A DCD and a TCD model with identical architecture and training data, trained on QM9 indices
below the held-out start only, PBE/def2-SVP on the dl-dcd basis, and scored on >= 500
held-out molecules (the cards carry the scores the docs quote).
"""

import densitylearn
from densitylearn.structure import QM9_HELDOUT_START


def _pair():
    return densitylearn.load_model("qm9-dcd"), densitylearn.load_model("qm9-tcd")


def test_shipped_pair_is_a_controlled_comparison():
    dcd, tcd = _pair()
    assert (dcd.target, tcd.target) == ("difference", "total")
    d, t = dcd.description, tcd.description
    assert d["config"] == t["config"]                      # identical architecture
    assert d["basis_hash"] == t["basis_hash"] and d["basis_name"] == "dl-dcd"
    assert d["elements"] == t["elements"] == [1, 6, 7, 8, 9]
    assert (dcd.xc, dcd.orbital_basis) == (tcd.xc, tcd.orbital_basis) == ("pbe", "def2-svp")
    dt, tt = d["training_dataset"], t["training_dataset"]
    assert dt["n"] == tt["n"] and dt["path"] == tt["path"]
    # the same structures, all from the training range: the held-out range is never trained on
    # (single QM9 molecules by index, and dimers of two QM9 molecules by their two indices)
    idx_d, idx_t = d["card"]["training_indices"], t["card"]["training_indices"]
    dim_d, dim_t = d["card"].get("training_dimers", []), t["card"].get("training_dimers", [])
    assert idx_d == idx_t and dim_d == dim_t and len(idx_d) + len(dim_d) == dt["n"]
    assert len(set(idx_d)) == len(idx_d) and max(idx_d) < QM9_HELDOUT_START
    assert all(len(p) == 2 and max(p) < QM9_HELDOUT_START for p in dim_d)


def test_shipped_cards_report_the_heldout_benchmark():
    dcd, tcd = _pair()
    hd, ht = dcd.description["card"]["heldout"], tcd.description["card"]["heldout"]
    assert hd["molecules"] >= 500 and ht["molecules"] == hd["molecules"]
    assert "120000-133885" in hd["sample"]
    # each card quotes its twin's mean, and the two agree with each other
    assert abs(hd["TCD_eps_mae_mean_percent"] - ht["eps_mae_mean_percent"]) < 1e-9
    assert abs(ht["DCD_eps_mae_mean_percent"] - hd["eps_mae_mean_percent"]) < 1e-9
    assert 0.0 <= hd["dcd_better_fraction"] <= 1.0
    assert set(hd["per_element_percent"]) == {"H", "C", "N", "O", "F"}
