"""Config parsing and checking: what `porch validate` tells a user about their files."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from porch.config import (
    PipelineConfig,
    Severity,
    check_config,
    has_errors,
    load_config,
    validate,
)
from porch.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

STEP = "def step(input_data):\n    return input_data\n"


def write_script(folder: Path, name: str, text: str = STEP) -> Path:
    """Write one script file and return its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_config(folder: Path, data: Any, filename: str | None = None) -> Path:
    """Write a config file (JSON-encoded `data`) and return its path."""
    if filename is None:
        filename = f"{data['name']}.json" if isinstance(data, dict) else "config.json"
    path = folder / filename
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def dporch(name: str = "pipeline_a", **overrides: Any) -> dict[str, Any]:
    """A valid DPorch config dict (script `step.py` beside it), with overrides."""
    data: dict[str, Any] = {
        "name": name,
        "scripts": ["step.py"],
        "source_pipeline_count": 0,
        "target_pipeline_names": [],
    }
    data.update(overrides)
    return data


def lines(problems: list[Any]) -> list[str]:
    return [str(p) for p in problems]


def only_problem(path: Path) -> str:
    """The single problem line check_config reports for `path` (fails if not exactly one)."""
    config, problems = check_config(path)
    assert config is None
    assert len(problems) == 1, lines(problems)
    assert problems[0].severity is Severity.ERROR
    return str(problems[0])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_script(tmp_path, "step.py")
    return tmp_path


# --- valid configs -------------------------------------------------------------------------


def test_dporch_config_parses_with_scripts_relative_to_config_folder(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    first = write_script(configs, "first.py")
    second = write_script(configs, "lib/second.py")
    path = write_config(
        configs,
        {
            "name": "pipeline_b",
            "scripts": ["first.py", "lib/second.py"],
            "source_pipeline_count": 2,
            "target_pipeline_names": ["pipeline_c", "pipeline-d"],
        },
    )

    config, problems = check_config(path)

    assert problems == []
    assert isinstance(config, PipelineConfig)
    assert config.name == "pipeline_b"
    assert config.scripts == (first.resolve(), second.resolve())
    assert config.source_pipeline_count == 2
    assert config.target_pipeline_names == ("pipeline_c", "pipeline-d")
    assert config.serializer == "pickle"
    assert config.folder == configs.resolve()


def test_optional_dporch_fields_default_to_a_source_with_no_targets(folder: Path) -> None:
    path = write_config(folder, {"name": "lonely", "scripts": ["step.py"]})

    config = load_config(path)

    assert config.source_pipeline_count == 0
    assert config.target_pipeline_names == ()


def test_windows_separators_in_script_paths_are_accepted(tmp_path: Path) -> None:
    shared = write_script(tmp_path, "shared/x.py")
    configs = tmp_path / "configs"
    configs.mkdir()
    path = write_config(configs, dporch(scripts=["..\\shared\\x.py"]))

    config, problems = check_config(path)

    assert problems == []
    assert config is not None
    assert config.scripts == (shared.resolve(),)


def test_porch_fields_are_parsed(folder: Path) -> None:
    path = write_config(folder, dporch(serializer="json", queue_limit=5))

    config = load_config(path)

    assert config.serializer == "json"
    assert config.queue_limit == 5


def test_load_config_raises_config_error_with_every_problem_line(folder: Path) -> None:
    path = write_config(folder, dporch(name="ab", source_pipeline_count=-1))

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert len(info.value.problems) == 2
    assert all(line.startswith(f"{path}: ") for line in info.value.problems)
    assert info.value.exit_code == 2


def test_missing_config_file_is_one_problem(tmp_path: Path) -> None:
    line = only_problem(tmp_path / "nope.json")
    assert line.startswith(f"{tmp_path / 'nope.json'}: file: ")
    assert "does not exist" in line


# --- one line per problem -------------------------------------------------------------------


def test_name_shorter_than_three_characters(folder: Path) -> None:
    path = write_config(folder, dporch(name="ab"), "c.json")
    line = only_problem(path)
    assert line.startswith(f"{path}: name: ")
    assert "at least 3 characters" in line
    assert "'ab'" in line


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("ab c", "whitespace"),
        ("abc\t", "whitespace"),
        ("a\u00a0bc", "whitespace"),
        ("abc\x00", "control or invisible characters (U+0000)"),
        ("abc\x1b[31m", "control or invisible characters (U+001B)"),
        ("ab\u200bc", "control or invisible characters (U+200B)"),
        ("ab/c", "must not contain '/'"),
        ("x" * 129, "129 bytes long in UTF-8, over 128"),
        ("\u00e9" * 65, "130 bytes long in UTF-8, over 128"),
    ],
)
def test_names_porch_cannot_carry_are_refused_with_the_fix(
    folder: Path, name: str, why: str
) -> None:
    path = write_config(folder, dporch(name=name), "c.json")
    line = only_problem(path)
    assert line.startswith(f"{path}: name: ")
    assert why in line
    assert "; " in line  # the problem, then the fix


@pytest.mark.parametrize(
    "name", ["abc", "a-b", "A_1", "pipeline-2_x", "1st_stage", "stage.one", "123", "x" * 128]
)
def test_names_dporch_accepts_are_accepted(folder: Path, name: str) -> None:
    path = write_config(folder, dporch(name=name), "c.json")
    config, problems = check_config(path)
    assert problems == []
    assert config is not None and config.name == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (".hidden", "hidden"),
        ("-abc", "option"),
        ("a:b|c", "':' '|'"),
        ("\u00fcmlaut", "'\u00fc'"),
        ("a\\b", "'\\\\'"),
    ],
)
def test_awkward_names_are_accepted_with_a_warning(folder: Path, name: str, why: str) -> None:
    path = write_config(folder, dporch(name=name), "c.json")
    config, problems = check_config(path)
    assert config is not None and config.name == name
    assert [p.severity for p in problems] == [Severity.WARNING]
    assert str(problems[0]).startswith(f"{path}: name: warning: ")
    assert why in str(problems[0])


def test_name_with_trailing_newline_is_rejected(folder: Path) -> None:
    path = write_config(folder, dporch(name="abc\n"), "c.json")
    line = only_problem(path)
    assert line.startswith(f"{path}: name: ")


def test_missing_script(folder: Path) -> None:
    path = write_config(folder, dporch(scripts=["absent.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[0]: ")
    assert str(folder / "absent.py") in line
    assert "does not exist" in line


def test_missing_scripts_key(folder: Path) -> None:
    path = write_config(folder, {"name": "pipeline_a"})
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts: missing")


def test_empty_scripts_list(folder: Path) -> None:
    path = write_config(folder, dporch(scripts=[]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts: ")
    assert "at least one" in line


def test_empty_script(folder: Path) -> None:
    write_script(folder, "empty.py", "\n  \n")
    path = write_config(folder, dporch(scripts=["step.py", "empty.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[1]: ")
    assert "empty" in line


def test_script_without_step(folder: Path) -> None:
    write_script(folder, "nostep.py", "def end():\n    pass\n")
    path = write_config(folder, dporch(scripts=["nostep.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[0]: ")
    assert "step()" in line


def test_script_syntax_error_names_script_and_line(folder: Path) -> None:
    script = write_script(folder, "broken.py", "x = 1\n\ndef step(input_data)\n    return 1\n")
    path = write_config(folder, dporch(scripts=["broken.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[0]: ")
    assert f"{script.resolve()}:3:" in line
    assert "syntax error" in line


def test_step_with_two_required_params(folder: Path) -> None:
    write_script(folder, "two.py", "\n\ndef step(a, b):\n    return a\n")
    path = write_config(folder, dporch(scripts=["two.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[0]: ")
    assert ":3:" in line
    assert "0 or 1 parameters" in line


@pytest.mark.parametrize(
    "signature", ["()", "(input_data)", "(input_data, extra=1)", "(*args)", "(a=1, *, b=2)"]
)
def test_step_signatures_with_at_most_one_required_param_are_accepted(
    folder: Path, signature: str
) -> None:
    write_script(folder, "ok.py", f"def step{signature}:\n    return None\n")
    path = write_config(folder, dporch(scripts=["ok.py"]))
    assert check_config(path)[1] == []


def test_end_with_params(folder: Path) -> None:
    write_script(folder, "end.py", STEP + "\ndef end(reason):\n    pass\n")
    path = write_config(folder, dporch(scripts=["end.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[0]: ")
    assert "end() must take no parameters" in line


def test_negative_source_pipeline_count(folder: Path) -> None:
    path = write_config(folder, dporch(source_pipeline_count=-1))
    line = only_problem(path)
    assert line.startswith(f"{path}: source_pipeline_count: must be from 0 to 10,000, got -1; ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_pipeline_count", "2"),
        ("source_pipeline_count", True),
        ("source_pipeline_count", 1.5),
        ("name", 123),
        ("scripts", "step.py"),
        ("target_pipeline_names", "pipeline_b"),
        ("queue_limit", False),
        ("serializer", None),
    ],
)
def test_wrong_types_name_the_field_and_the_value(folder: Path, field: str, value: Any) -> None:
    path = write_config(folder, dporch(**{field: value}), "c.json")
    line = only_problem(path)
    assert line.startswith(f"{path}: {field}: must be ")
    assert json.dumps(value) in line


def test_unknown_key_is_named(folder: Path) -> None:
    path = write_config(folder, dporch(sorce_pipeline_count=1))
    line = only_problem(path)
    assert line.startswith(f"{path}: sorce_pipeline_count: unknown key")


@pytest.mark.parametrize(("typo", "meant"), [("replica", "replicas"),
                                             ("partitionBy", "partition_by"),
                                             ("order", "ordered")])  # fmt: skip
def test_an_unknown_key_close_to_a_known_one_is_named_with_it(
    folder: Path, typo: str, meant: str
) -> None:
    path = write_config(folder, dporch(**{typo: 2}))
    line = only_problem(path)
    assert line.startswith(f"{path}: {typo}: unknown key; did you mean {meant!r}? (known keys: ")


def test_invalid_json_reports_line_and_column(folder: Path) -> None:
    path = folder / "bad.json"
    path.write_text('{\n  "name": "pipeline_a",\n  "scripts": ["step.py",]\n}\n', encoding="utf-8")
    line = only_problem(path)
    assert line.startswith(f"{path}: json: line 3 column ")


def test_json_that_is_not_an_object(folder: Path) -> None:
    path = write_config(folder, ["pipeline_a"])
    line = only_problem(path)
    assert line.startswith(f"{path}: json: must be a JSON object")


def test_queue_limit_below_one(folder: Path) -> None:
    path = write_config(folder, dporch(queue_limit=0))
    line = only_problem(path)
    assert line.startswith(f"{path}: queue_limit: must be from 1 to 1,000,000,000, got 0; ")


def test_unknown_serializer(folder: Path) -> None:
    path = write_config(folder, dporch(serializer="yaml"))
    line = only_problem(path)
    assert line.startswith(f"{path}: serializer: ")
    assert "'yaml'" in line
    assert "pickle" in line


def test_bad_target_name(folder: Path) -> None:
    path = write_config(folder, dporch(target_pipeline_names=["ok_name", "x"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: target_pipeline_names[1]: ")


def test_each_problem_is_reported_once(folder: Path) -> None:
    path = write_config(
        folder,
        dporch(name="ab", scripts=["absent.py"], source_pipeline_count=-3, queue_limit=0),
    )
    config, problems = check_config(path)
    assert config is None
    fields = sorted(p.field for p in problems)
    assert fields == ["name", "queue_limit", "scripts[0]", "source_pipeline_count"]


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("queue_limit", 3_000_000_000, "from 1 to 1,000,000,000"),
        ("queue_limit_bytes", 2**63, "from 1,024 to 1,099,511,627,776"),
        ("queue_limit_bytes", 1000, "from 1,024 to"),
        ("heartbeat_timeout_s", 0.5, "from 2 to 86400"),
        ("heartbeat_timeout_s", 10**6, "from 2 to 86400"),
        ("source_pipeline_count", 10**12, "from 0 to 10,000"),
    ],
)
def test_numbers_past_a_runtime_bound_are_refused(
    folder: Path, key: str, value: int, bound: str
) -> None:
    path = write_config(folder, dporch(**{key: value}))
    line = only_problem(path)
    assert line.startswith(f"{path}: {key}: must be {bound}")
    assert "remove the key for the default" in line


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_are_refused(folder: Path, text: str) -> None:
    path = folder / "c.json"
    path.write_text(json.dumps(dporch()).replace("}", f', "heartbeat_timeout_s": {text}}}'))
    line = only_problem(path)
    assert line.startswith(f"{path}: heartbeat_timeout_s: must be from 2 to 86400, got ")


def test_largest_numbers_are_accepted(folder: Path) -> None:
    path = write_config(
        folder,
        dporch(queue_limit=10**9, queue_limit_bytes=2**40, heartbeat_timeout_s=86400,
               source_pipeline_count=10_000),
    )  # fmt: skip
    config, problems = check_config(path)
    assert config is not None, lines(problems)


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_config_in_utf8_or_with_a_byte_order_mark_is_read(folder: Path, codec: str) -> None:
    path = folder / "c.json"
    text = json.dumps(dporch(name="caf\u00e9_stage"), ensure_ascii=False)
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    path.write_bytes(data)
    config, problems = check_config(path)
    assert config is not None and config.name == "caf\u00e9_stage"
    assert not has_errors(problems)


@pytest.mark.parametrize(
    ("codec", "what"),
    [
        ("latin-1", "is not UTF-8 (byte 0xE9 on line 1"),
        ("cp1252", "is not UTF-8 (byte 0xE9 on line 1"),
        ("utf-16-le", "looks like UTF-16 without a byte order mark"),
    ],
)
def test_config_in_another_encoding_is_one_line_naming_file_and_fix(
    folder: Path, codec: str, what: str
) -> None:
    path = folder / "c.json"
    path.write_bytes(json.dumps(dporch(name="caf\u00e9"), ensure_ascii=False).encode(codec))
    line = only_problem(path)
    assert line.startswith(f"{path}: file: {what}")
    assert "save it as UTF-8" in line
    assert "\n" not in line


def test_script_in_utf16_is_refused_by_validate(folder: Path) -> None:
    (folder / "step.py").write_bytes(STEP.encode("utf-16"))
    path = write_config(folder, dporch())
    line = only_problem(path)
    assert "looks like UTF-16" in line and "save it as UTF-8" in line


def test_script_with_a_bom_or_a_coding_line_is_accepted(folder: Path) -> None:
    (folder / "step.py").write_bytes(codecs.BOM_UTF8 + STEP.encode())
    (folder / "old.py").write_bytes(b"# -*- coding: latin-1 -*-\n" + STEP.encode() + b"# \xe9\n")
    path = write_config(folder, dporch(scripts=["step.py", "old.py"]))
    config, problems = check_config(path)
    assert config is not None, lines(problems)


# --- script paths the OS cannot represent (found by the property test below) ----------------


def test_script_path_with_nul_byte_is_a_problem_not_a_crash(folder: Path) -> None:
    path = write_config(folder, dporch(scripts=["a\x00b.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[0]: ")


def test_script_path_with_lone_surrogate_is_a_problem_not_a_crash(folder: Path) -> None:
    path = write_config(folder, dporch(scripts=["\ud800.py"]))
    line = only_problem(path)
    assert line.startswith(f"{path}: scripts[0]: ")


# --- graph checks ---------------------------------------------------------------------------


def test_clean_graph_has_no_problems(folder: Path) -> None:
    a = write_config(folder, dporch("pipeline_a", target_pipeline_names=["pipeline_b"]))
    b = write_config(folder, dporch("pipeline_b", source_pipeline_count=1))

    configs, problems = validate([a, b])

    assert problems == []
    assert [c.name for c in configs] == ["pipeline_a", "pipeline_b"]


def test_duplicate_names_across_files(folder: Path) -> None:
    first = write_config(folder, dporch("pipeline_a"), "one.json")
    second = write_config(folder, dporch("pipeline_a"), "two.json")

    _, problems = validate([first, second])

    assert len(problems) == 1, lines(problems)
    assert problems[0].severity is Severity.ERROR
    line = str(problems[0])
    assert line.startswith(f"{second.resolve()}: name: ")
    assert "'pipeline_a'" in line
    assert str(first.resolve()) in line
    assert has_errors(problems)


def test_target_not_among_files_is_a_warning(folder: Path) -> None:
    a = write_config(folder, dporch("pipeline_a", target_pipeline_names=["elsewhere"]))

    configs, problems = validate([a])

    assert len(configs) == 1
    assert len(problems) == 1, lines(problems)
    assert problems[0].severity is Severity.WARNING
    assert str(problems[0]).startswith(f"{a.resolve()}: target_pipeline_names[0]: warning: ")
    assert "'elsewhere'" in str(problems[0])
    assert not has_errors(problems)


def test_source_count_mismatch_is_a_warning(folder: Path) -> None:
    a = write_config(folder, dporch("pipeline_a", target_pipeline_names=["pipeline_c"]))
    b = write_config(folder, dporch("pipeline_b", target_pipeline_names=["pipeline_c"]))
    c = write_config(folder, dporch("pipeline_c", source_pipeline_count=3))

    _, problems = validate([a, b, c])

    assert len(problems) == 1, lines(problems)
    assert problems[0].severity is Severity.WARNING
    line = str(problems[0])
    assert line.startswith(f"{c.resolve()}: source_pipeline_count: warning: ")
    assert "pipeline_a" in line and "pipeline_b" in line
    assert not has_errors(problems)


def test_self_target_is_an_error(folder: Path) -> None:
    a = write_config(folder, dporch("pipeline_a", target_pipeline_names=["pipeline_a"]))

    configs, problems = validate([a])

    assert configs == []
    assert len(problems) == 1, lines(problems)
    assert problems[0].severity is Severity.ERROR
    assert str(problems[0]).startswith(f"{a}: target_pipeline_names[0]: ")
    assert "itself" in str(problems[0])


def test_validate_keeps_good_configs_and_reports_bad_ones(folder: Path) -> None:
    good = write_config(folder, dporch("pipeline_a"))
    bad = write_config(folder, dporch("pipeline_b", scripts=["absent.py"]))

    configs, problems = validate([good, bad])

    assert [c.name for c in configs] == ["pipeline_a"]
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{bad}: scripts[0]: ")


# --- property: check_config never crashes ---------------------------------------------------

# Any text, NUL and lone surrogates included: they must become problems, never crashes.
PATH_SAFE_TEXT = st.text(
    alphabet=st.characters(),
    max_size=20,
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | PATH_SAFE_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(PATH_SAFE_TEXT, children, max_size=4)
    ),
    max_leaves=10,
)
SCRIPT_NAMES = st.sampled_from(["step.py", "absent.py", "..\\step.py", "step", ""]) | PATH_SAFE_TEXT
KNOWN_FIELDS = {
    "name": st.sampled_from(["pipeline_a", "ab", "1bad"]) | PATH_SAFE_TEXT | JSON_VALUES,
    "scripts": st.lists(SCRIPT_NAMES | JSON_SCALARS, max_size=3) | JSON_VALUES,
    "source_pipeline_count": st.integers(min_value=-3, max_value=3) | JSON_VALUES,
    "target_pipeline_names": st.lists(
        st.sampled_from(["pipeline_a", "pipeline_b", "x"]) | JSON_SCALARS, max_size=3
    )
    | JSON_VALUES,
    "serializer": st.sampled_from(["pickle", "dill", "json", "yaml"]) | JSON_VALUES,
    "queue_limit": st.integers(min_value=-2, max_value=5) | JSON_VALUES,
}
CONFIG_DICTS = st.fixed_dictionaries({}, optional=KNOWN_FIELDS) | st.dictionaries(
    st.sampled_from(sorted(KNOWN_FIELDS)) | PATH_SAFE_TEXT, JSON_VALUES, max_size=6
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=CONFIG_DICTS | JSON_VALUES)
def test_check_config_never_raises(tmp_path_factory: pytest.TempPathFactory, data: Any) -> None:
    folder = tmp_path_factory.mktemp("prop")
    write_script(folder, "step.py")
    path = folder / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    config, problems = check_config(path)

    if config is None:
        assert any(p.severity is Severity.ERROR for p in problems)
    else:
        assert not has_errors(problems)
    for problem in problems:
        assert str(problem).startswith(f"{path}: ")


def test_misspelled_target_warning_names_the_closest_given_config(folder: Path) -> None:
    a = write_config(folder, dporch("pipeline_a", target_pipeline_names=["pipelin_b"]))
    b = write_config(folder, dporch("pipeline_b", source_pipeline_count=0))

    _, problems = validate([a, b])

    misspelled = [p for p in problems if "target_pipeline_names" in str(p)]
    assert len(misspelled) == 1, lines(problems)
    assert "'pipelin_b' is not among the given configs" in str(misspelled[0])
    assert str(misspelled[0]).endswith("did you mean 'pipeline_b'?")


def test_more_pipelines_than_other_hosts_hold_get_a_warning() -> None:
    """A beacon splits into parts, so 1,000 pipelines are fine; more than another host's table
    holds of one host (MAX_REMOTE_PIPELINES) is a warning."""
    from porch.config import check_graph
    from porch.discovery import MAX_REMOTE_PIPELINES

    def configs(names: list[str]) -> list[PipelineConfig]:
        return [PipelineConfig(name=n, scripts=(), path=Path(f"/c/{n}.json")) for n in names]

    assert check_graph(configs([f"pipeline_{i}" for i in range(1000)])) == []
    assert check_graph(configs([f"{i:03d}" + "x" * 125 for i in range(250)])) == []
    names = [f"pipeline_{i}" for i in range(MAX_REMOTE_PIPELINES + 1)]
    problems = check_graph(configs(names))
    assert [(p.field, p.severity) for p in problems] == [("name", Severity.WARNING)]
    assert "other hosts would not see them all" in str(problems[0])
    assert str(problems[0]).startswith(f"/c/{names[-1]}.json: name: warning: 4097 pipelines")


# --- concurrency (async steps) -------------------------------------------------------------


def test_concurrency_defaults_to_one_and_async_steps_are_accepted(tmp_path: Path) -> None:
    write_script(tmp_path, "step.py", "async def step(input_data):\n    return input_data\n")
    config, problems = check_config(write_config(tmp_path, dporch()))
    assert config is not None and config.concurrency == 1, lines(problems)
    config, problems = check_config(write_config(tmp_path, dporch(concurrency=100)))
    assert config is not None and config.concurrency == 100, lines(problems)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (0, "concurrency: must be from 1 to 10,000, got 0"),
        (10_001, "concurrency: must be from 1 to 10,000, got 10001"),
        (2.5, "concurrency: must be a whole number from 1 to 10,000, got 2.5"),
        (True, "concurrency: must be a whole number from 1 to 10,000, got true"),
    ],
)
def test_concurrency_out_of_range_names_the_field_and_the_range(
    folder: Path, value: object, said: str
) -> None:
    assert said in only_problem(write_config(folder, dporch(concurrency=value)))


def test_concurrency_without_an_async_step_is_a_warning(folder: Path) -> None:
    config, problems = check_config(write_config(folder, dporch(concurrency=8)))
    assert config is not None
    [problem] = problems
    assert problem.severity is Severity.WARNING
    assert "concurrency: warning: is 8, but no script has an `async def step()`" in str(problem)
