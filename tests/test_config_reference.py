"""The config reference (`recsys config keys`, docs/config.md) and `recsys config show`."""

from __future__ import annotations

import pytest

from recsys.cli import main
from recsys.config_reference import experiment_keys, model_keys, render
from tests.conftest import REPO


def test_docs_config_md_is_the_reference_the_code_prints():
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render(), (
        "docs/config.md is stale: regenerate it with `recsys config keys > docs/config.md`"
    )


def test_every_key_is_listed_once_and_explained():
    from recsys.config import ExperimentConfig
    from recsys.models import REGISTRY

    keys = [k.key for k in experiment_keys()]
    assert len(keys) == len(set(keys))
    assert {"seed", "data.split.protocol", "train.early_stopping.patience", "eval.ks", "tracking.uri"} <= set(
        keys
    )
    assert {k.split(".")[0] for k in keys} == set(ExperimentConfig.model_fields)
    # a field added without a docstring fails here: the reference would list it with no meaning
    undocumented = [k.key for k in experiment_keys() if not k.doc]
    for name, cls in REGISTRY.items():
        listed = [k.key for k in model_keys(name)]
        assert listed == ["model.name"] + [f"model.{f}" for f in cls.config_cls.model_fields if f != "name"]
        undocumented += [f"{name}: {k.key}" for k in model_keys(name) if not k.doc]
    assert undocumented == []


def test_a_key_shows_its_type_default_and_bounds():
    lr = {k.key: k for k in experiment_keys()}["train.lr"]
    assert (lr.type, lr.default, lr.bounds) == ("float", "default `0.001`", "> 0")
    seed = {k.key: k for k in experiment_keys()}["data.split.seed"]
    assert (seed.type, seed.default, seed.bounds) == ("int", "default `0`", ">= 0")
    protocol = {k.key: k for k in experiment_keys()}["data.split.protocol"]
    assert protocol.type == "random_ratio | leave_one_out | temporal | presplit"
    hidden = {k.key: k for k in model_keys("two_tower")}["model.hidden"]
    assert (hidden.type, hidden.default) == ("list of int >= 1", "default `[128]`")  # the items' bounds
    assert {k.key: k for k in experiment_keys()}["data.path"].default == "required"


def test_config_keys_for_some_models_and_an_unknown_one(capsys):
    assert main(["config", "keys", "--model", "sasrec"]) == 0
    out = capsys.readouterr().out
    assert "- `model.max_len` (int; default `50`; >= 1)" in out
    assert "## `model.name: sasrec`" in out and "## `model.name: icsrec`" not in out
    assert main(["config", "keys", "--model", "nope"]) == 2
    assert "unknown model 'nope'; known models:" in capsys.readouterr().err


def test_config_show_prints_the_config_that_would_run(capsys, tmp_path):
    from recsys.config import load_config
    from recsys.pipeline import run_dir_for

    args = [str(REPO / "configs" / "ml100k_lightgcn.yaml"), "train.lr=2e-3", "model.layers=2"]
    assert main(["config", "show", "-c", *args]) == 0
    out = capsys.readouterr().out
    cfg = load_config(args[0], args[1:])
    shown = load_config(_write(tmp_path, out))  # read back as every command reads a config
    assert shown.to_dict() == cfg.to_dict()  # every default filled in, the overrides applied
    assert cfg.train.lr == 2e-3 and cfg.model["layers"] == 2 and "init_std: 0.1" in out
    assert f"# run folder (checkpoints; --resume continues it): {run_dir_for(cfg)}" in out.splitlines()
    assert main(["config", "show", "-c", args[0], "train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_published_config_shows_as_a_config_that_loads_back_the_same(name, capsys, tmp_path):
    from recsys.config import load_config

    assert main(["config", "show", "-c", str(REPO / "configs" / name)]) == 0
    shown = load_config(_write(tmp_path, capsys.readouterr().out))
    assert shown.to_dict() == load_config(REPO / "configs" / name).to_dict()


def test_shown_text_that_yaml_1_2_reads_as_a_number_stays_text(capsys, tmp_path):
    from recsys.config import load_config

    config = str(REPO / "configs" / "ml100k_lightgcn.yaml")
    # a YAML 1.1 dumper writes 0o17 bare, which this project's YAML 1.2 reader takes for 15; and an override
    # with a line break must stay inside the header comment
    assert (
        main(
            [
                "config",
                "show",
                "-c",
                config,
                "name='0o17'",
                "tracking.experiment='0o7'",
                "model={name: lightgcn,\n dim: 8}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    shown = load_config(_write(tmp_path, out))
    assert (shown.name, shown.tracking.experiment, shown.model["dim"]) == ("0o17", "0o7", 8)
    assert out.splitlines()[0].startswith("# ") and out.splitlines()[1].startswith("# run folder")


def _write(folder, text: str):
    path = folder / "shown.yaml"
    path.write_text(text)
    return path
