"""Names and defaults that live in more than one place agree, and the shared ones are defined once."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import yaml

from bench.settings import EnergySettings, FlopSettings, ProfileSettings
from bench.sweep import REPO
from bench.timing import TimingConfig
from models.backbones import BACKBONES
from models.decoders import DECODERS
from models.encoders import ENCODERS, variant_name

CONF = REPO / "conf"


@pytest.mark.parametrize("group,cls", [("timing", TimingConfig), ("energy", EnergySettings),
                                       ("flops", FlopSettings), ("profile", ProfileSettings)])
def test_the_yaml_defaults_are_the_settings_defaults(group, cls):
    root = yaml.safe_load((CONF / "config.yaml").read_text())
    yaml_values = root[group] if group in root else yaml.safe_load((CONF / group / "default.yaml").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert set(yaml_values) == set(defaults), f"{group}: keys differ"
    assert {k: yaml_values[k] for k in defaults} == defaults


def base_files(group: str) -> list:
    """The group's files that hold values (presets that only inherit are left out)."""
    return [p for p in sorted((CONF / group).glob("*.yaml")) if "defaults" not in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("group,registry", [("encoder", ENCODERS), ("backbone", BACKBONES), ("decoder", DECODERS)])
def test_each_yaml_value_is_its_builders_default(group, registry):
    """A YAML file may set a knob the builder has no default for, never another default than the builder's."""
    for path in base_files(group):
        values = yaml.safe_load(path.read_text())
        params = inspect.signature(registry.get(values["name"])).parameters
        for key, value in values.items():
            default = params[key].default if key in params else inspect.Parameter.empty
            if isinstance(value, str) and value.startswith("${"):
                continue  # an interpolation: the value comes from elsewhere in the config
            if default is not inspect.Parameter.empty and not key.startswith("_"):
                expected = list(default) if isinstance(default, tuple) else default
                assert value == expected, f"{path.name}: {key}={value!r}, the builder's default is {default!r}"


def test_no_preset_repeats_its_base():
    """Presets inherit from their base file (Hydra defaults) and set only what differs."""
    for path in sorted((CONF / "encoder").glob("*_*.yaml")):
        values = yaml.safe_load(path.read_text())
        if "defaults" in values:
            base = yaml.safe_load((CONF / "encoder" / f"{values['defaults'][0]}.yaml").read_text())
            same = {k for k, v in values.items() if k != "defaults" and base.get(k) == v and k != "layers"}
            assert same <= {"lpe"}, f"{path.name} repeats {sorted(same)} of its base"  # lpe is named for clarity


def test_the_variant_label_of_the_default_config_is_the_builders():
    """The label follows the knobs the config gives, not defaults of its own."""
    assert variant_name({"name": "proscale"}) == variant_name(
        {"name": "proscale", "layers": [3, 3, 3], "lpe": True, "trc": "faithful"})


STAGE_LIST = re.compile(r"""["']backbone["'],\s*["']pixel_decoder["']""")


def test_stage_names_are_defined_once():
    """Only models/stages.py spells out the list of stages; everything else imports it."""
    spelled = [str(p.relative_to(REPO)) for folder in ("bench", "models", "reports", "scripts")
               for p in (REPO / folder).rglob("*.py") if STAGE_LIST.search(p.read_text())]
    assert spelled == ["models/stages.py"]


def test_files_stay_small_and_measuring_never_imports_reporting():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for folder in ("bench", "models", "reports",
                                                                                     "scripts")
             for p in (REPO / folder).rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > 420} == {}
    upward = [str(p.relative_to(REPO)) for p in (REPO / "bench").rglob("*.py")
              if re.search(r"^\s*(from|import) reports\b", p.read_text(), re.M)]
    assert upward == []


def test_each_pixel_decoder_owns_its_checkpoint_names():
    from models.checkpoints import encoder_rules

    targets = {repl for _, repl in encoder_rules()}
    assert "pixel_decoder.transformer.trc.linear.\\1" in targets  # PRO-SCALE's own gate
    assert ENCODERS.get("m2f").from_checkpoint([3] * 6, {"sem_seg_head.pixel_decoder.layer_1.weight"}) == {
        "encoder": "m2f", "encoder.num_layers": 6}
    assert ENCODERS.get("proscale").from_checkpoint([3] * 6, {"sem_seg_head.pixel_decoder.layer_1.weight"}) is None
    assert ENCODERS.get("proscale").from_checkpoint([1, 2, 2, 3], set()) == {
        "encoder": "proscale", "encoder.layers": [1, 2, 1], "encoder.lpe": True, "encoder.trc": "off"}


def test_measures_declare_their_columns_and_the_settings_read_the_registry():
    from bench import row
    from bench.measures import MEASURES, timed_names
    from bench.settings import measure_names

    declared = {c for n in MEASURES.names() for c in MEASURES.get(n).columns}
    assert declared <= set(row.COLUMNS), sorted(declared - set(row.COLUMNS))
    job_side = set(row.IDENTITY + row.CONFIG + row.PARAMS + ["gmacs_analytic_pixel_decoder"] + row.ENVIRONMENT)
    assert set(row.COLUMNS) - job_side <= declared  # every measured column has a measure that fills it
    assert set(measure_names()) == set(MEASURES.names()) and measure_names()[0] == "memory"  # in run order
    assert timed_names() == {"latency", "energy", "profile"}


def test_every_published_accuracy_label_is_a_label_the_code_gives():
    """The published accuracy joins rows on the variant label: a reworded label would drop points silently."""
    import pandas as pd

    from bench.config import compose, to_dict

    labels = {variant_name(to_dict(compose([f"encoder={p.stem}"]))["encoder"])
              for p in (CONF / "encoder").glob("*.yaml")}
    published = set(pd.read_csv(REPO / "reports" / "accuracy.csv", dtype={"variant": str})["variant"])
    assert published - labels == set()
