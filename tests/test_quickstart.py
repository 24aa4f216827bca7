"""The README's main job, end to end (the embedded default)."""

import pytest

from densitylearn import cli


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert cli.main(["quickstart", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "ethanol" in text and "DCD floor" in text
    assert (out / "fits.h5").exists()
    assert len(list((out / "cubes").glob("*.cube"))) >= 8
    assert (out / "plots" / "relative_gain_violin.png").exists()
    assert "DCD lower on 100 % of structures" in text
    # step 3: the shipped pretrained models on the same molecules
    assert "3/3 prediction with the pretrained models qm9-tcd and qm9-dcd" in text
    rows = [line.split() for line in text.splitlines()
            if line.split()[:1] and line.split()[0] in ("water", "ammonia", "methane", "ethanol")
            and len(line.split()) == 5]
    assert len(rows) == 4
    for name, tcd, dcd, floor_t, floor_d in rows:
        # the fit of the exact density (the floor) is better than any model in this basis; no garbage
        assert float(floor_t) <= float(tcd) < 25 and float(floor_d) <= float(dcd) < 25, (name, tcd, dcd)
    assert "the DCD model is more accurate than the TCD model on" in text
    assert len(list((out / "cubes_predicted").glob("*.cube"))) == 12
    assert (out / "plots" / "pretrained_tcd_vs_dcd.png").exists()
