"""The table of synthetic figures (experiments/figures.py) and the laws' identity in their data."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import structdrop as sd
from structdrop.experiments import _io, claims, driver, plots, report, synthetic
from structdrop.experiments.figures import FIGURES, Deferred, check_figures, headline, read_current

ORDER = ["fig1", "fig3", "fig4", "fig5", "fig6", "head", "gap"]

# fig3 (laws on weights and on units) and gap (full batch), a few seconds in this process.
SMALL = dataclasses.replace(
    synthetic.Config().quick_version(),
    dropconnect_iterations=400,
    snapshots=6,
    mc_samples=50,
    gap_widths=(50,),
    gd_max_iterations=5,
    n_jobs=1,
)
PAIR = ["fig3", "gap"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fig3 and gap, computed once for the tests below."""
    out = tmp_path_factory.mktemp("made")
    assert synthetic.run(PAIR, out, config=SMALL) == {"fig3": "done", "gap": "done"}
    return out


# ------------------------------------------------------------------------------------------------
# One table
# ------------------------------------------------------------------------------------------------
def test_the_table_defines_order_names_computations_and_plots() -> None:
    assert list(FIGURES) == ORDER
    assert check_figures(None) == check_figures([]) == ORDER
    assert check_figures(["gap", "fig4", "fig1"]) == ["fig1", "fig4", "gap"]
    with pytest.raises(_io.InputError, match="unknown figure 'fig2'; choose from fig1, fig3"):
        check_figures(["fig1", "fig2"])
    for name, figure in FIGURES.items():
        assert figure.name == name and figure.title
        assert isinstance(figure.compute, Deferred)
        assert figure.compute.resolve() is getattr(synthetic, name)
        assert isinstance(figure.plot, Deferred) and callable(figure.plot.resolve())
    assert FIGURES["fig3"].plot.resolve() is FIGURES["fig6"].plot.resolve() is plots.dropconnect
    assert synthetic.check_figures is check_figures and synthetic.run is driver.run


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("fig1", {"final_gap": 0.0123456}, " (final gap 1.23e-02)"),
        ("fig5", {"final_gaps": {"0.1": 0.5, "0.3": 2.5e-3}}, " (final gaps 5.00e-01, 2.50e-03)"),
        ("gap", {"runs": [{"width": 50}], "width_gap": 0.04873}, " (gap at width 50: 4.87e-02)"),
        ("fig3", {"runs": []}, ""),
        ("fig4", {}, ""),
        ("fig6", {}, ""),
        ("head", {}, ""),
    ],
)
def test_headline(name: str, data: dict[str, Any], expected: str) -> None:
    assert headline(name, data) == expected
    assert synthetic.headline(name, data) == expected


def test_headline_of_an_unknown_figure_is_refused() -> None:
    with pytest.raises(_io.InputError, match="unknown figure 'fig2'"):
        headline("fig2", {})


def test_the_report_lists_the_claims_of_the_table_in_its_order(tmp_path: Path) -> None:
    text = report.build_report(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "**" in line]
    expected = [claim.where for figure in FIGURES.values() for claim in figure.claims]
    assert [row.split(" | ")[0][2:] for row in rows] == expected
    assert len(expected) == 10
    for figure in FIGURES.values():
        assert f"### {figure.title}" in text
    thm_23 = next(row for row in rows if row.startswith("| Thm 2.3 |"))
    assert thm_23.endswith("**fails** |")  # needs no figure
    thm_27 = next(row for row in rows if row.startswith("| Thm 2.7 |"))
    assert "run `--figure fig1`" in thm_27 and thm_27.endswith("**not run** |")


# ------------------------------------------------------------------------------------------------
# Laws stored by identity
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_run_names_its_law_by_identity(made: Path) -> None:
    fig3 = json.loads((made / "fig3.json").read_text())
    for run in fig3["runs"]:
        assert sd.Scheme.from_dict(run["scheme"]) == sd.DropConnect(0.5)
        assert sd.Scheme.from_dict(run["dropout"]["scheme"]) == sd.Bernoulli(0.5)
    gap = json.loads((made / "gap.json").read_text())
    (row,) = gap["runs"]
    assert sd.Scheme.from_dict(row["scheme"]) == sd.GridBlock(row["p"], SMALL.block_size)
    laws = "|".join(sd.Scheme.laws())
    for name in PAIR:
        text = (made / f"{name}.json").read_text()
        assert not re.search(rf"\b({laws})\(", text), name  # no repr of a law anywhere


@pytest.mark.slow
def test_same_seed_gives_the_same_bytes(made: Path, tmp_path: Path) -> None:
    assert synthetic.run(PAIR, tmp_path, config=SMALL) == {"fig3": "done", "gap": "done"}
    for name in PAIR:
        assert (tmp_path / f"{name}.json").read_bytes() == (made / f"{name}.json").read_bytes()


def _rewrite(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _drop_baseline_laws(data: dict[str, Any]) -> None:
    for run in data["runs"]:
        del run["dropout"]["scheme"]


def _laws_as_repr(data: dict[str, Any]) -> None:
    for run in data["runs"]:
        run["scheme"] = repr(sd.Scheme.from_dict(run["scheme"]))


@pytest.mark.slow
@pytest.mark.parametrize("change", [_drop_baseline_laws, _laws_as_repr])
def test_a_figure_without_law_identities_is_recomputed_not_misread(
    made: Path, tmp_path: Path, change: Any
) -> None:
    """Figure data whose runs do not name their laws by identity (no "scheme", or a repr): not
    done, not in the report (its claims say to run it), and recomputed without --force to the
    same bytes."""
    shutil.copytree(made, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "fig3.json"
    _rewrite(path, change)
    assert read_current(path, "fig3") is None
    assert not driver.is_done(tmp_path, "fig3", SMALL)
    assert driver.is_done(tmp_path, "gap", SMALL)
    text = report.build_report(tmp_path)
    assert "Not run yet: `structdrop reproduce synthetic --figure fig3`" in text
    assert "![gap](gap.png)" in text
    driver.check_outputs(tmp_path, PAIR, force=False)  # ours: overwritten without --force
    assert synthetic.run(PAIR, tmp_path, config=SMALL) == {"fig3": "done", "gap": "skipped"}
    assert path.read_bytes() == (made / "fig3.json").read_bytes()


# ------------------------------------------------------------------------------------------------
# Readers take the law from its identity, not from loose fields
# ------------------------------------------------------------------------------------------------
def test_summaries_read_the_law_back() -> None:
    law = sd.SlidingBlock(0.3, 5, gamma=1.0 - 0.3**0.2)
    fig4 = {
        "runs": [
            {
                "p": 0.3,
                "variant": "paper",
                "scheme": law.to_dict(),
                "interior_drop_rate": 0.7,
                "lr": 1e-5,
                "final": 2.0,
            },
            {
                "p": 0.3,
                "variant": "grid",
                "scheme": sd.GridBlock(0.3, 5).to_dict(),
                "interior_drop_rate": 0.3,
                "lr": 1e-5,
                "final": 1.0,
            },
        ]
    }
    paper, grid = claims.fig4_summary(fig4)
    assert f"gamma {law.gamma:.3g}," in paper and "gamma n/a," in grid
    head = {
        "runs": [
            {
                "scheme": sd.GridBlock(0.9, 2).to_dict(),
                "beta": 1.0,
                "rho": 2,
                "gap": 0.0,
                "predicted": [3.0, 1.0],
            }
        ]
    }
    assert claims.head_summary(head)[0].startswith("- r = 2: beta 1, rho* 2")


# ------------------------------------------------------------------------------------------------
# A finished figure stands in only for the same settings
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"p": 0.3},
        {"block_size": 2},
        {"gap_p": 0.2},
        {"gap_widths": (60,)},
        {"lr_decay": 1e4},
        {"iterations": 19_000},
        {"quick": False},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_figure_of_other_settings_is_not_done(made: Path, change: dict[str, Any]) -> None:
    assert driver.is_done(made, "gap", SMALL)
    assert driver.is_done(made, "gap", dataclasses.replace(SMALL, n_jobs=3))
    assert not driver.is_done(made, "gap", dataclasses.replace(SMALL, **change))


def test_a_figure_of_another_seed_is_recomputed_not_skipped(made: Path, tmp_path: Path) -> None:
    """A folder holding seed 0's figure: a run with seed 1 (replacing it, --force) computes its
    own (other data, other numbers), and a run with seed 0 afterwards recomputes seed 0's, to
    the same bytes."""
    shutil.copytree(made, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "gap.json"
    assert synthetic.run(["gap"], tmp_path, seed=1, config=SMALL, force=True) == {"gap": "done"}
    seeded = json.loads(path.read_text())
    assert seeded["config"]["seed"] == 1
    first = json.loads((made / "gap.json").read_text())
    assert first["config"]["seed"] == 0
    assert seeded["runs"] != first["runs"]
    assert synthetic.run(["gap"], tmp_path, seed=1, config=SMALL) == {"gap": "skipped"}
    assert synthetic.run(["gap"], tmp_path, seed=0, config=SMALL, force=True) == {"gap": "done"}
    assert path.read_bytes() == (made / "gap.json").read_bytes()


# ------------------------------------------------------------------------------------------------
# Results of other settings, and leftovers of a finished figure
# ------------------------------------------------------------------------------------------------
def test_a_figure_of_other_settings_is_refused_unless_forced(made: Path, tmp_path: Path) -> None:
    shutil.copytree(made, tmp_path, dirs_exist_ok=True)
    before = (tmp_path / "gap.json").read_bytes()
    with pytest.raises(_io.InputError, match=r"seed.*--force"):
        synthetic.run(["gap"], tmp_path, seed=1, config=SMALL)
    assert (tmp_path / "gap.json").read_bytes() == before
    assert not (tmp_path / "checkpoints").exists()
    assert synthetic.run(["gap"], tmp_path, seed=1, force=True, config=SMALL) == {"gap": "done"}
    assert json.loads((tmp_path / "gap.json").read_text())["config"]["seed"] == 1


def test_the_cli_refuses_another_seed_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from structdrop.cli import app

    (tmp_path / "fig1.json").write_text(
        json.dumps(
            {
                "figure": "fig1",
                "config": {"seed": 5},
                "run": {"scheme": sd.Bernoulli(0.5).to_dict()},
            }
        )
    )
    result = CliRunner().invoke(
        app, ["reproduce", "synthetic", "--quick", "--figure", "fig1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--force" in lines[0]
    assert not (tmp_path / "fig1.png").exists()


def test_a_finished_figure_drops_leftover_checkpoints_and_writes_nothing_else(
    made: Path, tmp_path: Path
) -> None:
    shutil.copytree(made, tmp_path, dirs_exist_ok=True)
    (tmp_path / "timings.json").unlink()  # killed before the timings and the cleanup
    leftover = tmp_path / "checkpoints" / "gap" / "state.npz"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"state")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert synthetic.run(PAIR, tmp_path, config=SMALL) == {"fig3": "skipped", "gap": "skipped"}
    assert not (tmp_path / "checkpoints").exists()
    after = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert after == before
