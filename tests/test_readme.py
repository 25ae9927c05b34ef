"""The README's examples and tables say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.rendering import TemplateRenderer
from outreach_actors.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text of a ``## title`` section, up to the next one."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_the_plan_reference_is_a_valid_plan() -> None:
    text = re.search(r"```yaml\n(.*?)```", section("Plan reference"), re.DOTALL).group(1)
    plan = validate_plan(text, check_template=TemplateRenderer(ROOT / "templates").check_template)
    assert set(plan.nodes) == {"intro", "bump", "pause", "thanks", "stop"}


def test_the_configuration_table_names_every_setting_and_no_other() -> None:
    documented = set(re.findall(r"^\| `(OUTREACH_[A-Z0-9_]+)` \|", section("Configuration"),
                                re.MULTILINE))
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert documented == settings


def test_every_documented_setting_says_what_it_means() -> None:
    rows = re.findall(r"^\| `(OUTREACH_[A-Z0-9_]+)` \|([^|]*)\|([^|]*)\|", section("Configuration"),
                      re.MULTILINE)
    assert [name for name, _, meaning in rows if not meaning.strip()] == []


def test_a_host_app_imports_enroll_and_its_refusals_from_contrib() -> None:
    from outreach_actors import contrib
    from outreach_actors.domain import engine

    assert re.search(r"from outreach_actors\.contrib import [^\n]*\benroll\b", README)
    assert contrib.AlreadyEnrolled is engine.AlreadyEnrolled
    assert issubclass(contrib.AlreadyEnrolled, contrib.EnrollmentError)
    assert "OutreachUnavailable" in README and issubclass(contrib.OutreachUnavailable, RuntimeError)


def test_the_architecture_names_every_floor_and_only_files_that_exist() -> None:
    text = section("Architecture")
    package = ROOT / "outreach_actors"
    floors = set(re.findall(r"^\| `([a-z_/]+/|[a-z_]+\.py)` \|", text, re.MULTILINE))
    on_disk = {f"{path.name}/" for path in package.iterdir()
               if path.is_dir() and (path / "__init__.py").exists()}
    assert on_disk <= floors | {"providers/"}  # providers/ is named by its sendgrid/ folder
    named = re.findall(r"`((?:domain|worker|web|dev|cli|contrib|providers)/[a-z_/]+(?:\.py)?)`", text)
    named += [f"tests/invariants/{name}" for name in re.findall(r"`(test_[a-z_]+\.py)`", text)]
    missing = [path for path in named
               if not (package / path).exists() and not (ROOT / path).exists()]
    assert named and missing == []


def test_the_simulation_example_passes_as_written(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    example = re.search(r"```python\n(.*?)```", section("Testing plans"), re.DOTALL).group(1)
    (tmp_path / "test_welcome.py").write_text(example)
    # Run as a user runs it: its own pytest, outside this project's configuration.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OUTREACH_", "PYTEST_"))}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_welcome.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_the_plan_test_script_example_meets_its_expectations() -> None:
    import yaml

    from outreach_actors.dev.plan_simulation import run_script

    text = re.search(r"```yaml\n(contacts:.*?)```", section("Testing plans"), re.DOTALL).group(1)
    results = list(run_script(ROOT / "tests" / "samples" / "plans" / "split.yaml", yaml.safe_load(text)))
    assert [unmet for _, unmet in results] == [[], []]


def test_the_split_example_is_a_valid_split() -> None:
    text = re.search(r"```yaml\n(nodes:.*?)```", section("Splits and experiments"), re.DOTALL).group(1)
    plan = validate_plan("name: t\nstart: test\n" + text + "  short: {type: exit}\n  long: {type: exit}\n")
    assert plan.node("test").holdout == 10


def test_the_branch_example_is_a_valid_branch() -> None:
    text = re.search(r"```yaml\n(events:.*?)```", section("Branches"), re.DOTALL).group(1)
    exits = "".join(f"  {name}: {{type: exit}}\n"
                    for name in ["big_team", "enterprise", "pricing", "emea", "standard", "stop"])
    plan = validate_plan("name: t\nstart: intro\n" + text + exits)
    assert [branch.to for branch in plan.node("route").branches] == [
        "big_team", "enterprise", "pricing", "emea"]
    assert plan.node("route").default == "standard"
