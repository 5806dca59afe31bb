"""README.md and analysis/RESULTS.md stay in step with the code: every study key, search-space key and
hardware-profile key is documented, every command shown parses, every example study loads, every link
points at a file, and the extension example passes the quantizer contract."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mpsearch.cli.main import build_parser
from mpsearch.config import Section, StudyConfig
from mpsearch.hardware.profile import HardwareProfile
from mpsearch.space import GROUP_KEYS, SearchSpace

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "analysis" / "RESULTS.md"
DOCS = (README, RESULTS)


def _code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.DOTALL | re.MULTILINE)


def _section(annotation) -> type[Section] | None:
    """The config section class an annotation holds (`X`, `X | None`), if any."""
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def study_keys(model: type[Section] = StudyConfig, prefix: str = "", seen: dict | None = None) -> list[str]:
    """Every dotted key of a study YAML. A section class met again (search.finetune is a train section)
    adds only its own key: its fields are documented where it first appears."""
    seen = {} if seen is None else seen
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + name
        keys.append(key)
        section = _section(field.annotation)
        if section is not None and section not in seen:
            seen[section] = key
            keys += study_keys(section, key + ".", seen)
    return keys


def test_the_walk_reaches_nested_sections():
    keys = study_keys()
    assert {"name", "data.features.specaugment.time_width", "search.warm_start.ilp", "search.finetune",
            "baseline.checkpoint", "supernet.lambdas"} <= set(keys)
    assert "search.finetune.lr" not in keys  # documented once, as train.lr


def test_every_study_key_is_in_the_readme():
    readme = README.read_text()
    missing = [key for key in study_keys() if f"`{key}`" not in readme]
    assert not missing, f"README.md's study reference lacks {missing}"
    assert "`extends`" in readme


def test_every_search_space_key_is_in_the_readme():
    readme = README.read_text()
    missing = [key for key in sorted({*GROUP_KEYS, "groups", "rest"}) if f"`{key}`" not in readme]
    assert not missing, f"README.md's search-space reference lacks {missing}"


def test_every_hardware_profile_key_is_in_the_readme():
    readme = README.read_text()
    missing = [key for key in HardwareProfile.model_fields if f"`{key}`" not in readme]
    assert not missing, f"README.md's hardware-profile reference lacks {missing}"


def _commands(path: Path) -> list[str]:
    """Each command line of the bash blocks, comments cut off, `a && b` split."""
    commands = []
    for block in _code_blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():  # a line ending in a backslash goes on
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_shown_parses(doc):
    parser = build_parser()
    commands = _commands(doc)
    assert commands
    for command in commands:
        words = shlex.split(command)
        if words[0] == "mpsearch":
            args = parser.parse_args(words[1:])  # an unknown command or option exits here
            assert hasattr(args, "func"), command
        elif words[:2] == ["python", "-m"]:
            assert words[2] == "pytest" and all((ROOT / w).exists() for w in words[3:] if w.startswith("tests/"))
        elif words[0] == "python":
            assert (ROOT / words[1]).is_file(), f"{doc.name}: {command}: no such script"


def _write_study(text: str, folder: Path) -> Path:
    """The example as a file; `extends:` points at the shipped studies/ it names."""
    text = re.sub(r"^extends: (\S+)", lambda m: f"extends: {ROOT / 'studies' / m.group(1)}", text, flags=re.MULTILINE)
    path = folder / "example.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_example_study_loads(doc, tmp_path):
    studies = [b for b in _code_blocks(doc, "yaml") if re.search(r"^name: ", b, flags=re.MULTILINE)]
    assert studies
    for block in studies:
        cfg = StudyConfig.from_yaml(_write_study(block, tmp_path))
        if cfg.search.space:
            assert (ROOT / cfg.search.space).is_file()


def test_the_readme_search_space_fits_the_quickstart_model():
    import yaml

    from mpsearch.models import build_model
    from mpsearch.quant import find_sites

    [block] = [b for b in _code_blocks(README, "yaml") if b.startswith("groups:")]
    model_cfg = StudyConfig.from_yaml(ROOT / "studies" / "quickstart.yaml").model
    sites = find_sites(build_model(model_cfg, vocab_size=30, n_mels=80))
    space = SearchSpace.from_dict(yaml.safe_load(block), sites, source="README.md")
    assert space.size() > 1


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_points_at_a_file(doc):
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local
    missing = [t for t in local if not (doc.parent / t).exists()]
    assert not missing, f"{doc.name} links to missing files {missing}"
    headings = re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
    anchors = re.findall(r"\]\(#([^)]+)\)", doc.read_text())
    assert not [a for a in anchors if a not in slugs], f"{doc.name} links to missing headings"


def test_the_extension_example_passes_the_quantizer_contract():
    [example] = [b for b in _code_blocks(README, "python") if "QUANTIZERS.register" in b]
    name = re.search(r'QUANTIZERS\.register\("([^"]+)"\)', example).group(1)
    # A child process: registering into the shared registry here would add a method to every other test.
    script = example + f"""
from mpsearch.testing import quantizer_contract as contract
checked = 0
# three widths keep it quick; tests/quant/test_contract.py runs every width of every registered method
for cases, checks in (([c for c in contract.weight_cases([{name!r}]) if c[1] in (2, 4, 8)], contract.WEIGHT_CHECKS),
                      (contract.sweep_cases([{name!r}]), contract.WEIGHT_SWEEP_CHECKS)):
    for case in cases:
        for check in checks:
            try:
                check(*case)
                checked += 1
            except BaseException as exc:
                if type(exc).__name__ != "Skipped":
                    raise
print("checked", checked)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 0
