"""The pictures: every PNG a README links is committed and worth looking at, and the demo names
(and, asked to, saves) what a scenario drew; services never import matplotlib.

The scenarios' own pictures are drawn from real stacks in their patterns' tests
(S8 `latency.png`, S10 `breaker.png`); these checks need no stack.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchmarks import report
from patternkit import charts
from patternkit.__main__ import keep_pictures
from patternkit.testing import check_picture
from patternkit.topology import discover, repo_root

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOT = repo_root()
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")


def linked_pictures() -> list[tuple[Path, Path]]:
    """(README, picture) for every PNG that a README links."""
    readmes = [ROOT / "README.md", *(folder / "README.md" for folder in discover(ROOT))]
    return [(readme, (readme.parent / link).resolve())
            for readme in readmes if readme.is_file()
            for link in IMAGE_LINK.findall(readme.read_text())]


def line_chart(path: Path) -> Path:
    def draw() -> Figure:
        fig, (ax,) = charts.figure("a test chart", heights=(4.0,), width=8)
        charts.ecdf(ax, [1.0, 2.0, 3.0, 40.0], "some latencies", charts.COLORS["hit"])
        charts.log_scale(ax, "x")
        ax.legend()
        return fig

    saved = charts.picture(path, draw)
    assert saved == path
    return path


def test_every_png_a_readme_links_is_committed_and_not_blank() -> None:
    links = linked_pictures()
    where = {picture.relative_to(ROOT).as_posix() for _, picture in links}
    expected = {"benchmarks/results.png",
                "serving_patterns/prediction_cache/latency.png",
                "serving_patterns/prediction_circuit_break/breaker.png"}
    assert expected <= where, where
    for readme, picture in links:
        assert picture.is_file(), f"{readme.relative_to(ROOT)} links {picture}, which is missing"
        check_picture(picture)
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(picture)],
                                 cwd=ROOT, capture_output=True)
        assert tracked.returncode == 0, f"{picture} is not committed"


def test_a_blank_image_fails_the_picture_check(tmp_path: Path) -> None:
    plt = charts.pyplot()
    fig = plt.figure(figsize=(8, 5))
    blank = charts.save(fig, tmp_path / "blank.png")
    with pytest.raises(AssertionError, match="distinct colours"):
        check_picture(blank)
    (tmp_path / "not.png").write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(AssertionError, match="not a PNG"):
        check_picture(tmp_path / "not.png")
    facts = check_picture(line_chart(tmp_path / "chart.png"))
    assert facts["width"] == 8 * charts.DPI


def test_the_demo_names_the_pictures_and_saves_copies_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, folder = tmp_path / "run", tmp_path / "pattern"
    folder.mkdir()
    assert keep_pictures(run_dir, folder, save=False) == "-"  # nothing drawn
    line_chart(run_dir / "latency.png")

    named = keep_pictures(run_dir, folder, save=False)
    assert named == str(run_dir / "latency.png")
    assert f"picture: {run_dir / 'latency.png'}" in capsys.readouterr().out
    assert not (folder / "latency.png").exists()

    keep_pictures(run_dir, folder, save=True)
    assert (folder / "latency.png").read_bytes() == (run_dir / "latency.png").read_bytes()
    assert f"saved as {folder / 'latency.png'}" in capsys.readouterr().out


def test_the_benchmark_chart_redraws_from_its_committed_numbers(tmp_path: Path) -> None:
    data = shutil.copy(ROOT / "benchmarks" / "results.json", tmp_path / "results.json")
    ratios, title = report.read_chart_data(Path(data))
    assert ratios and title.startswith("Pattern benchmark")
    assert report.main([str(data)]) == 0
    check_picture(tmp_path / "results.png")


def test_services_and_scenarios_import_no_matplotlib() -> None:
    modules = ["patternkit.predictor", "patternkit.charts", "patternkit.testing",
               "serving_patterns.prediction_cache.proxy",
               "serving_patterns.prediction_cache.scenario",
               "serving_patterns.prediction_circuit_break.proxy",
               "serving_patterns.prediction_circuit_break.scenario"]
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('matplotlib')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
