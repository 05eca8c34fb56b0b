"""``powercap --version``, shell completion, and ``--report`` without the ``report`` extra."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from powercap.cli import app
from powercap.report import REPORT_INSTALL, ChartsUnavailable, require_matplotlib

runner = CliRunner()


def test_version_prints_the_installed_distribution_version() -> None:
    result = runner.invoke(app, ["--version"], prog_name="powercap")
    assert result.exit_code == 0, result.output
    assert result.output == f"powercap {version('powercap-scheduler')}\n"


def test_show_completion_prints_a_bash_script(monkeypatch: pytest.MonkeyPatch) -> None:
    # Asked for bash by name: without this typer guesses the shell from the process
    # tree, and a run started from sh (not a shell it completes) fails.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = runner.invoke(app, ["--show-completion", "bash"], prog_name="powercap")
    assert result.exit_code == 0, result.output
    assert "_POWERCAP_COMPLETE=complete_bash" in result.output
    assert "complete -o default -F _powercap_completion powercap" in result.output


def test_completion_completes_command_names() -> None:
    result = runner.invoke(
        app,
        [],
        prog_name="powercap",
        env={
            "_POWERCAP_COMPLETE": "complete_bash",
            "COMP_WORDS": "powercap comp",
            "COMP_CWORD": "1",
        },
    )
    assert result.output.split() == ["compare"]


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import matplotlib`` fail as it does where the extra is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None: ImportError on import


@pytest.mark.usefixtures("no_matplotlib")
def test_require_matplotlib_names_the_install_command() -> None:
    with pytest.raises(ChartsUnavailable, match=r"pip install 'powercap-scheduler\[report\]'"):
        require_matplotlib()


@pytest.mark.usefixtures("no_matplotlib")
@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--report", "REPORT"],
        ["plan", "--report", "REPORT"],
        ["carbon", "report", "--report", "REPORT"],
    ],
)
def test_report_without_matplotlib_fails_before_planning(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "report"
    result = runner.invoke(
        app, [str(out) if a == "REPORT" else a for a in args], prog_name="powercap"
    )
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert REPORT_INSTALL in flat, result.output
    assert not out.exists()


def test_require_matplotlib_passes_where_it_is_installed() -> None:
    require_matplotlib()  # the dev extra installs matplotlib
