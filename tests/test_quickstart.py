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
