"""`porch init` and `porch validate`, run in-process with click's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result

from porch.cli import porch

pytestmark = pytest.mark.timeout(30)

DPORCH_FIELDS = {"name", "scripts", "source_pipeline_count", "target_pipeline_names"}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty folder; undo the env and logging setup the `porch` group does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORCH_LOG_LEVEL", "warning")
    yield tmp_path
    structlog.reset_defaults()


def run(*args: str) -> Result:
    return CliRunner().invoke(porch, list(args))


def write_pipeline(
    name: str, scripts: list[str], count: int = 0, targets: list[str] | None = None
) -> Path:
    path = Path(f"{name}.json")
    path.write_text(
        json.dumps(
            {
                "name": name,
                "scripts": scripts,
                "source_pipeline_count": count,
                "target_pipeline_names": targets or [],
            }
        ),
        encoding="utf-8",
    )
    return path


# --- init -----------------------------------------------------------------------------------


def test_init_writes_dporch_config_and_script_template(in_tmp: Path) -> None:
    result = run(
        "init", "-n", "pipeline_a", "-i", "0", "-o", "pipeline_b", "-s", "generate_number.py"
    )

    assert result.exit_code == 0, result.output
    config = json.loads((in_tmp / "pipeline_a.json").read_text(encoding="utf-8"))
    assert set(config) == DPORCH_FIELDS
    assert config == {
        "name": "pipeline_a",
        "scripts": ["generate_number.py"],
        "source_pipeline_count": 0,
        "target_pipeline_names": ["pipeline_b"],
    }
    template = (in_tmp / "generate_number.py").read_text(encoding="utf-8")
    assert "def step(input_data):" in template
    compile(template, "generate_number.py", "exec")


def test_init_output_validates_with_only_a_warning_for_the_absent_target() -> None:
    assert run("init", "-n", "pipeline_a", "-o", "pipeline_b", "-s", "gen.py").exit_code == 0

    result = run("validate", "pipeline_a.json")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        line for line in result.stdout.splitlines() if "warning: " in line
    ]
    assert len(result.stdout.splitlines()) == 1
    assert "'pipeline_b'" in result.stdout


def test_init_repeats_targets_and_scripts_in_order(in_tmp: Path) -> None:
    result = run(
        "init",
        "-n",
        "merge",
        "-i",
        "2",
        "-o",
        "out_a",
        "-o",
        "out_b",
        "-s",
        "one.py",
        "-s",
        "two.py",
    )

    assert result.exit_code == 0, result.output
    config = json.loads((in_tmp / "merge.json").read_text(encoding="utf-8"))
    assert config["scripts"] == ["one.py", "two.py"]
    assert config["source_pipeline_count"] == 2
    assert config["target_pipeline_names"] == ["out_a", "out_b"]
    assert (in_tmp / "one.py").exists() and (in_tmp / "two.py").exists()


def test_init_keeps_an_existing_script(in_tmp: Path) -> None:
    (in_tmp / "mine.py").write_text("def step():\n    return 1\n", encoding="utf-8")

    result = run("init", "-n", "pipeline_a", "-s", "mine.py")

    assert result.exit_code == 0, result.output
    assert (in_tmp / "mine.py").read_text(encoding="utf-8") == "def step():\n    return 1\n"


def test_init_without_name_writes_config_json(in_tmp: Path) -> None:
    result = run("init")

    assert result.exit_code == 0, result.output
    config = json.loads((in_tmp / "config.json").read_text(encoding="utf-8"))
    assert set(config) == DPORCH_FIELDS


def test_init_refuses_to_overwrite_without_force(in_tmp: Path) -> None:
    existing = in_tmp / "pipeline_a.json"
    existing.write_text("my precious config\n", encoding="utf-8")

    result = run("init", "-n", "pipeline_a", "-s", "gen.py")

    assert result.exit_code != 0
    assert existing.read_text(encoding="utf-8") == "my precious config\n"
    assert "--force" in result.stderr


def test_init_overwrites_with_force(in_tmp: Path) -> None:
    existing = in_tmp / "pipeline_a.json"
    existing.write_text("old\n", encoding="utf-8")

    result = run("init", "-n", "pipeline_a", "-s", "gen.py", "--force")

    assert result.exit_code == 0, result.output
    assert json.loads(existing.read_text(encoding="utf-8"))["name"] == "pipeline_a"


@pytest.mark.parametrize("name", ["1st_stage", "stage.one"])
def test_init_accepts_the_names_dporch_accepts(in_tmp: Path, name: str) -> None:
    result = run("init", "-n", name)

    assert result.exit_code == 0, result.output
    assert json.loads((in_tmp / f"{name}.json").read_text(encoding="utf-8"))["name"] == name


@pytest.mark.parametrize("name", ["ab", "bad name", "bad/name", "x" * 129])
def test_init_rejects_a_bad_name(in_tmp: Path, name: str) -> None:
    result = run("init", "-n", name)

    assert result.exit_code == 2
    assert "name" in result.stderr.lower()
    assert list(in_tmp.iterdir()) == []


# --- validate -------------------------------------------------------------------------------


def test_validate_clean_files_exits_zero_and_says_ok() -> None:
    Path("step.py").write_text("def step(input_data):\n    return input_data\n", encoding="utf-8")
    a = write_pipeline("pipeline_a", ["step.py"], targets=["pipeline_b"])
    b = write_pipeline("pipeline_b", ["step.py"], count=1)

    result = run("validate", str(a), str(b))

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "ok" in result.output


def test_validate_bad_files_exit_one_with_one_line_per_problem() -> None:
    Path("step.py").write_text("def step(input_data):\n    return input_data\n", encoding="utf-8")
    a = write_pipeline("ab", ["step.py"])
    b = write_pipeline("pipeline_b", ["absent.py"], count=-1)

    result = run("validate", str(a), str(b))

    assert result.exit_code == 1
    problem_lines = result.stdout.splitlines()
    assert len(problem_lines) == 3, result.stdout
    assert problem_lines[0].startswith(f"{a}: name: ")
    assert sorted(line.split(": ")[1] for line in problem_lines[1:]) == [
        "scripts[0]",
        "source_pipeline_count",
    ]
    assert all(line.startswith(f"{b}: ") for line in problem_lines[1:])


def test_validate_missing_file_is_a_problem_not_a_crash() -> None:
    result = run("validate", "nowhere.json")

    assert result.exit_code == 1
    assert result.stdout.startswith("nowhere.json: file: ")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_needs_a_file() -> None:
    result = run("validate")

    assert result.exit_code == 2
