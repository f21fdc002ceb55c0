"""Config: YAML + overrides validated; unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import inspect
import warnings

import pytest

from recsys.config import ConfigError, apply_overrides, dump_config, load_config, validate_config

BASE = """
name: t
seed: 3
data:
  source: interactions
  path: /tmp/x.csv
  columns: {user: u, item: i}
  split: {protocol: random_ratio, test_ratio: 0.2}
model: {name: mf_bpr, dim: 8}
train: {epochs: 2, batch_size: 16}
eval: {ks: [20, 5]}
"""


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(BASE)
    return p


def test_loads_and_fills_defaults(cfg_file):
    cfg = load_config(cfg_file)
    assert cfg.seed == 3
    assert cfg.eval.ks == [5, 20]  # sorted, deduplicated
    assert cfg.model["name"] == "mf_bpr" and cfg.model["dim"] == 8
    assert "reg" in cfg.model  # the model section is resolved with the model class's defaults
    assert cfg.train.lr == pytest.approx(1e-3)


def test_overrides_parse_yaml_values(cfg_file):
    cfg = load_config(cfg_file, ["train.lr=5e-4", "model.dim=16", "eval.ks=[1,3]", "data.split.seed=9"])
    assert cfg.train.lr == pytest.approx(5e-4)
    assert cfg.model["dim"] == 16
    assert cfg.eval.ks == [1, 3]
    assert cfg.data.split.seed == 9


def test_override_creates_optional_section(cfg_file):
    cfg = load_config(cfg_file, ["data.split.valid_ratio=0.1", "train.early_stopping.patience=3"])
    assert cfg.train.early_stopping.patience == 3 and cfg.train.early_stopping.metric == "ndcg@20"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=0.1", r"train\.lrr: unknown key; allowed keys here: .*batch_size.*lr"),
        ("train.epochs=abc", r"train\.epochs: .*integer.*'abc'"),
        ("train.sampler=random", r"train\.sampler: .*'interactions' or 'users'"),
        ("model.dimm=3", r"model\.dimm: unknown key; allowed keys here: .*dim"),
        ("model.dim=x", r"model\.dim: .*integer"),
        ("model.name=nope", r"model\.name: unknown model 'nope'; allowed values: .*lightgcn"),
        ("data.split.protocol=kfold", r"data\.split\.protocol: .*leave_one_out"),
        ("data.colour=red", r"data\.colour: unknown key"),
        ("bogus=1", r"bogus: unknown key; allowed keys here: data, device, eval"),
        ("eval.ks=[0]", r"eval\.ks: .*positive"),
        ("train.lr=-1", r"train\.lr: .*greater than 0"),
        ("train=3", r"train: .*"),
        ("noequals", r"expected KEY=VALUE"),
    ],
)
def test_bad_keys_and_types_name_the_key(cfg_file, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(cfg_file, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml, line 2, column 1: not valid YAML: expected ',' or ']'"
    ):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"config file not found: .* \(a folder\)"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml: expected UTF-8 text, got byte 0xe9"):
        load_config(latin)


def test_repeated_key_is_an_error(tmp_path):
    # a second train section would otherwise replace the first, every key of it
    twice = tmp_path / "twice.yaml"
    twice.write_text(BASE + "train: {epochs: 7}\n")
    with pytest.raises(
        ConfigError, match=r"twice\.yaml, line 12, column 1: .*key 'train' repeated \(first on line 10\)"
    ):
        load_config(twice)
    inline = tmp_path / "inline.yaml"
    inline.write_text(BASE.replace("model: {name: mf_bpr, dim: 8}", "model: {name: mf_bpr, name: lightgcn}"))
    with pytest.raises(ConfigError, match=r"key 'name' repeated"):
        load_config(inline)


def test_yaml_1_2_numbers_and_words(cfg_file):
    # YAML 1.1 reads 010 as octal 8 and 1:30 as 90; "on" as a boolean, refused for a text field
    cfg = load_config(cfg_file, ["seed=010", "name=on", "train.progress=off", "train.lr=1e-3"])
    assert cfg.seed == 10 and cfg.name == "on" and cfg.train.progress is False and cfg.train.lr == 1e-3
    with pytest.raises(ConfigError, match=r"train\.epochs: .*got '1:30'"):
        load_config(cfg_file, ["train.epochs=1:30"])


def test_hash_in_an_override_is_text(cfg_file):
    # YAML would read "#" and " #1" as comments; a quoted value is YAML as before
    cfg = load_config(cfg_file, ["data.separator=#", "name=my run #1"])
    assert cfg.data.separator == "#" and cfg.name == "my run #1"
    cfg = load_config(cfg_file, ['data.separator="#"', 'name="run #3"', "tracking.experiment=a#b"])
    assert cfg.data.separator == "#" and cfg.name == "run #3" and cfg.tracking.experiment == "a#b"
    # a JSON list or mapping is read as JSON, a " #" in its strings included (a sweep passes its points so);
    # not JSON (a repeated key, NaN, YAML's flow style), it is read as before
    assert apply_overrides({}, ['a=["x #1", {"b": "y #2"}]']) == {"a": ["x #1", {"b": "y #2"}]}
    assert apply_overrides({}, ["a=[x, 2] #c", "b={c: 1}"]) == {"a": "[x, 2] #c", "b": {"c": 1}}
    with pytest.raises(ConfigError, match="key .b. repeated"):
        apply_overrides({}, ['a={"b": 1, "b": 2}'])


@pytest.mark.parametrize(
    "name", ["../elsewhere", "a/b", "a\\b", ".hidden", "..", "", "tab\there", "D:elsewhere"]
)
def test_a_run_name_that_is_not_one_folder_name_is_refused(cfg_file, name):
    # the run folder is runs/<name>-<fingerprint>, deleted by a retrain: "../x" would reach outside runs/
    with pytest.raises(ConfigError, match=r"name: .*must be one folder name"):
        load_config(cfg_file, [f"name={name!r}"])


@pytest.mark.parametrize(
    "split, key",
    [
        ("{protocol: random_ratio, test_ratio: 0.2}", "data.split.valid_ratio"),
        (
            "{protocol: temporal, temporal_cut: 0.8}",
            r"data.split.valid_temporal_cut \(or valid_cut_timestamp\)",
        ),
    ],
)
def test_early_stopping_without_a_validation_split_names_the_protocol_s_key(cfg_file, split, key):
    # refused when the config loads (was: after preparing the data, naming random_ratio's key for any protocol)
    overrides = ["data.columns.timestamp=t", f"data.split={split}", "train.early_stopping.patience=3"]
    with pytest.raises(ConfigError, match=rf"train\.early_stopping needs a validation split.*set {key}, or"):
        load_config(cfg_file, overrides)


def test_an_error_in_an_override_s_value_says_the_command_line_set_it(cfg_file):
    # the header names the YAML file, which does not hold the bad value
    with pytest.raises(ConfigError) as caught:
        load_config(cfg_file, ["train.epochs=abc", "seed=4"])
    assert caught.value.args[0].splitlines()[1].endswith("[set on the command line: 'train.epochs=abc']")
    cfg_file.write_text(BASE.replace("epochs: 2", "epochs: abc"))
    with pytest.raises(ConfigError) as caught:
        load_config(cfg_file, ["seed=4"])  # the file's own value: no such note
    assert "command line" not in str(caught.value)
    # a check of a whole section names the overrides of the values it is about, not any under the section
    cfg_file.write_text(BASE.replace("test_ratio: 0.2", "test_ratio: 0.6, valid_ratio: 0.5"))
    with pytest.raises(ConfigError) as caught:
        load_config(cfg_file, ["data.split.seed=3"])
    assert "command line" not in str(caught.value)
    cfg_file.write_text(BASE.replace("test_ratio: 0.2", "test_ratio: 0.6"))
    with pytest.raises(ConfigError) as caught:
        load_config(cfg_file, ["data.split.seed=3", "data.split.valid_ratio=0.5"])
    line = next(x for x in str(caught.value).splitlines() if x.startswith("  data.split"))
    assert line.endswith("[the command line set a value it names: 'data.split.valid_ratio=0.5']"), line
    # a check of the whole config (no key of its own) names the override that caused it
    cfg_file.write_text(BASE.replace("train: {epochs: 2", "train: {early_stopping: {patience: 2}, epochs: 2"))
    with pytest.raises(ConfigError) as caught:
        load_config(cfg_file, ["data.split.valid_ratio=0.0"])
    assert "[the command line set a value it names: 'data.split.valid_ratio=0.0']" in str(caught.value)


def test_preparing_data_names_a_malformed_override_as_such(cfg_file):
    from recsys.config import load_data_config

    with pytest.raises(ConfigError, match=r"override 'force': expected KEY=VALUE"):
        load_data_config(cfg_file, ["force"])
    with pytest.raises(ConfigError, match=r"only data\.\* keys apply when preparing data"):
        load_data_config(cfg_file, ["train.epochs=3"])


def test_yaml_merge_keys_and_list_keys(tmp_path, cfg_file):
    merged = tmp_path / "m.yaml"
    merged.write_text(
        BASE.replace("train: {epochs: 2, batch_size: 16}", "train: &t {epochs: 2}\neval2: &e {}")
    )
    text = cfg_file.read_text().replace(
        "model: {name: mf_bpr, dim: 8}", "model:\n  <<: {name: mf_bpr}\n  dim: 8"
    )
    merged.write_text(text)
    assert load_config(merged).model["dim"] == 8
    listed = tmp_path / "l.yaml"
    listed.write_text(BASE + "? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match=r"a key must be a single value"):
        load_config(listed)


def test_booleans_are_not_numbers(cfg_file):
    for override in ("train.epochs=true", "train.lr=true", "seed=false", "eval.ks=[true,10]"):
        with pytest.raises(ConfigError, match=r"expected a number, got the boolean"):
            load_config(cfg_file, [override])


def test_checked_before_training(cfg_file):
    with pytest.raises(ConfigError, match=r"train\.lr: .*finite"):
        load_config(cfg_file, ["train.lr=.inf"])
    with pytest.raises(ConfigError, match=r"device: String should match pattern"):
        load_config(cfg_file, ["device=gpu"])
    assert load_config(cfg_file, ["device=cuda:1"]).device == "cuda:1"
    for metric in ("foo@20", "ndcg@50", "ndcg", "ndcg@05"):
        with pytest.raises(
            ConfigError, match=rf"early_stopping\.metric '{metric}' is not computed"
        ) as caught:
            load_config(cfg_file, ["data.split.valid_ratio=0.1", f"train.early_stopping.metric={metric}"])
        # a check across sections: no empty key (": Value error, ...") and no dump of the whole config
        assert str(caught.value).splitlines()[1].startswith("  train.early_stopping.metric")
        assert "Value error" not in str(caught.value) and "'data':" not in str(caught.value)
    with pytest.raises(
        ConfigError, match=r"train\.epochs: Input should be a valid integer \(got \{'a': 1\}\)"
    ):
        load_config(cfg_file, ["train.epochs={a: 1}"])  # a wrong value is still shown, a mapping too
    assert (
        load_config(
            cfg_file, ["data.split.valid_ratio=0.1", "train.early_stopping.metric=recall@5"]
        ).train.early_stopping.metric
        == "recall@5"
    )
    with pytest.raises(ConfigError, match=r"override 'train\.\.lr=0\.1': expected a key like train\.lr"):
        load_config(cfg_file, ["train..lr=0.1"])


def test_override_into_scalar_is_an_error():
    with pytest.raises(ConfigError, match="seed is a value"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ holds the published experiment configs"
    for path in configs:
        cfg = load_config(path)
        assert cfg.name, path


def test_fingerprint_ignores_tracking_but_not_training(cfg_file):
    a = load_config(cfg_file)
    b = load_config(cfg_file, ["tracking.experiment=other"])
    c = load_config(cfg_file, ["train.lr=0.01"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_validate_rejects_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        validate_config([1, 2])


def test_readme_own_data_example_validates():
    """The README's "Your own data" config must stay a valid config."""
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    cfg = validate_config(yaml.safe_load(block), source="README.md")
    assert cfg.data.split.protocol == "temporal" and cfg.model["name"] == "lightgcn"


def test_split_key_of_another_protocol(cfg_file):
    # under random_ratio, a temporal cut is ignored: a warning, so that an override can switch protocols
    with pytest.warns(
        UserWarning, match=r"data\.split\.temporal_cut=0\.5 applies to split\.protocol 'temporal' only"
    ):
        load_config(cfg_file, ["data.split.temporal_cut=0.5"])
    with pytest.warns(
        UserWarning, match=r"data\.split\.test_ratio=0\.3 applies to split\.protocol 'random_ratio'"
    ):
        cfg = load_config(cfg_file, ["data.split.protocol=leave_one_out", "data.split.test_ratio=0.3"])
    assert cfg.data.split.protocol == "leave_one_out"
    # the ignored key is set back to its default: the same data is not prepared and cached again under
    # another key, and the run keeps its checkpoint folder
    plain = load_config(cfg_file, ["data.split.protocol=leave_one_out"])
    assert cfg.data.split == plain.data.split and cfg.fingerprint() == plain.fingerprint()
    # a dumped config lists every key, at its default: it loads without a warning
    dumped = cfg_file.parent / "dumped.yaml"
    clean = load_config(cfg_file, ["data.split={protocol: leave_one_out}"])
    dumped.write_text(dump_config(clean))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(dumped).data.split == clean.data.split


@pytest.mark.parametrize("text, kind", [("just a string\n", "str"), ("- a\n- b\n", "list")])
def test_a_config_that_is_no_mapping_is_named_with_or_without_overrides(tmp_path, capsys, text, kind):
    """With an override, a top-level string or list was a traceback (the override indexed into it), and
    `recsys data prepare` said `data: Field required`."""
    from recsys.cli import main
    from recsys.config import load_data_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    expected = f"invalid config ({path}): expected a mapping at the top level, got a {kind}"
    for load, overrides in (
        (load_config, ()),
        (load_config, ("seed=1",)),
        (load_data_config, ("data.path=x",)),
    ):
        with pytest.raises(ConfigError) as err:
            load(path, overrides)
        assert str(err.value) == expected
    for argv in (["train", "-c", str(path), "train.epochs=1"], ["data", "prepare", "-c", str(path)]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"error: {expected}"


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_a_seed_out_of_range_is_named_when_the_config_loads(cfg_file, seed):
    with pytest.raises(
        ConfigError, match=r"(?s)seed: Input should be (greater than or equal to 0|less than)"
    ):
        load_config(cfg_file, [f"seed={seed}"])
    assert load_config(cfg_file, [f"seed={2**63 - 1}"]).seed == 2**63 - 1


def test_a_key_set_twice_on_the_command_line_names_the_last_override(cfg_file):
    from recsys.config import ConfigError, load_config

    cfg = cfg_file
    with pytest.raises(ConfigError) as caught:
        load_config(cfg, ["train.epochs=3", "train.epochs=abc"])
    assert "[set on the command line: 'train.epochs=abc']" in str(caught.value)


def test_fingerprint_ignores_thread_count_and_progress(cfg_file):
    from recsys.config import load_config

    cfg = cfg_file
    base = load_config(cfg).fingerprint()
    assert load_config(cfg, ["train.num_threads=3"]).fingerprint() == base
    assert load_config(cfg, ["train.progress=true"]).fingerprint() == base
    # how often the checkpoint is written and how many users are scored at once change no number either: a
    # run resumed with another value kept training in a new folder, from the start
    assert load_config(cfg, ["train.checkpoint_every=3", "eval.block_size=7"]).fingerprint() == base
    assert load_config(cfg, ["train.lr=0.02"]).fingerprint() != base


def test_fields_added_later_keep_the_fingerprints_of_runs_trained_before(cfg_file):
    """A run's folder and resume are found by its fingerprint: a new training field at its default must not
    change it (8822132ec11f is this config's before train.optimizer, lr_schedule, warmup_steps, decay_scope and
    max_grad_norm existed)."""
    base = load_config(cfg_file).fingerprint()
    assert base == "8822132ec11f"
    defaults = [
        "train.optimizer=adam",
        "train.lr_schedule=constant",
        "train.warmup_steps=0",
        "train.decay_scope=all",
        "train.max_grad_norm=",
    ]
    assert load_config(cfg_file, defaults).fingerprint() == base
    changes = (
        "train.optimizer=adamw",
        "train.lr_schedule=linear",
        "train.warmup_steps=5",
        "train.decay_scope=matrices",
        "train.max_grad_norm=5",
    )
    changed = {load_config(cfg_file, [c]).fingerprint() for c in changes}
    assert len(changed) == len(changes) and base not in changed


def test_an_empty_override_value_is_null(cfg_file):
    from recsys.config import load_config

    cfg = cfg_file
    loaded = load_config(cfg, ["train.max_steps=5", "train.max_steps="])
    assert loaded.train.max_steps is None


def test_preparing_data_refuses_a_key_that_only_starts_with_data(cfg_file):
    from recsys.config import ConfigError, load_data_config

    cfg = cfg_file
    with pytest.raises(ConfigError, match="only data.* keys apply"):
        load_data_config(cfg, ["dataset.path=elsewhere.csv"])


def test_the_split_seed_is_reset_under_protocols_without_randomness(cfg_file):
    # split.seed draws only random_ratio's split and presplit's validation carve-out; under leave_one_out or
    # temporal it changes nothing, yet it went into the cache key and the run fingerprint (the shipped
    # ml100k configs set seed: 42, and switching them to leave_one_out prepared the same data again)
    with pytest.warns(
        UserWarning, match=r"data\.split\.seed=42 applies to split\.protocol 'random_ratio' or"
    ):
        cfg = load_config(cfg_file, ["data.split.protocol=leave_one_out", "data.split.seed=42"])
    plain = load_config(cfg_file, ["data.split.protocol=leave_one_out"])
    assert cfg.data.split == plain.data.split and cfg.fingerprint() == plain.fingerprint()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(cfg_file, ["data.split.seed=42"]).data.split.seed == 42  # random_ratio reads it


def test_a_data_config_built_in_python_resets_unread_split_keys_as_a_file_does():
    # the reset lived in the YAML loader only: DataConfig(...) in Python hashed a key its protocol never reads
    from features.config import DataConfig

    base = {"source": "movielens_100k", "path": "x", "split": {"protocol": "leave_one_out"}}
    with pytest.warns(UserWarning) as record:
        cfg = DataConfig(**{**base, "split": {"protocol": "leave_one_out", "test_ratio": 0.1, "seed": 7}})
    assert sorted(str(w.message) for w in record) == [
        "data.split.seed=7 applies to split.protocol 'random_ratio' or 'presplit' only; ignored under "
        "'leave_one_out'",
        "data.split.test_ratio=0.1 applies to split.protocol 'random_ratio' only; ignored under 'leave_one_out'",
    ]
    assert cfg.split == DataConfig(**base).split
    # the warnings point at the line that built the config, not into pydantic's validation
    assert {w.filename for w in record} == {__file__}


def test_the_unread_split_key_warning_of_a_loaded_file_points_at_the_loading_line(cfg_file):
    with pytest.warns(UserWarning, match=r"data\.split\.seed=42") as record:
        load_config(cfg_file, ["data.split.protocol=leave_one_out", "data.split.seed=42"])
    assert [(w.filename, w.lineno) for w in record] == [(__file__, inspect.currentframe().f_lineno - 1)]


def test_reading_keys_of_another_source_warn_and_are_reset(cfg_file):
    # columns / separator / has_header belong to 'interactions', train_file / test_file to 'user_lines':
    # switching the source by an override left them in the cache key and the fingerprint, though unread
    from features.config import DataConfig

    switch = ["data.source=movielens_100k", "data.path=auto"]
    with pytest.warns(UserWarning) as record:
        cfg = load_config(cfg_file, [*switch, "data.separator=;", "data.has_header=false"])
    assert sorted(str(w.message) for w in record) == [
        f"{cfg_file}: data.columns={{'user': 'u', 'item': 'i'}} applies to source 'interactions' only; "
        "ignored under source 'movielens_100k'",
        f"{cfg_file}: data.has_header=False applies to source 'interactions' only; ignored under source "
        "'movielens_100k'",
        f"{cfg_file}: data.separator=';' applies to source 'interactions' only; ignored under source "
        "'movielens_100k'",
    ]
    assert {w.filename for w in record} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file without those keys: nothing to warn about
        plain = load_config(cfg_file, [*switch, "data.columns={}"])
    assert cfg.data == plain.data and cfg.fingerprint() == plain.fingerprint()
    with pytest.warns(UserWarning, match=r"data\.test_file=None applies to source 'user_lines' only"):
        seq = DataConfig(source="amazon_seq", path="x", name="Beauty", test_file=None)
    assert seq == DataConfig(source="amazon_seq", path="x", name="Beauty")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read by their own source: kept
        lines = DataConfig(source="user_lines", path="x", train_file="a.txt", test_file="b.txt")
        assert (lines.train_file, lines.test_file) == ("a.txt", "b.txt")
        assert load_config(cfg_file, ["data.separator=;"]).data.separator == ";"


def test_the_split_seed_of_a_presplit_without_a_validation_carve_out_is_reset(cfg_file, tmp_path):
    # presplit draws only valid_from_train_ratio's carve-out: with the ratio 0 the seed changes nothing
    from features.config import DataConfig

    base = {"source": "user_lines", "path": "x", "split": {"protocol": "presplit"}}
    with pytest.warns(UserWarning, match=r"data\.split\.seed=2020 draws only the validation carve-out"):
        cfg = DataConfig(**{**base, "split": {"protocol": "presplit", "seed": 2020}})
    assert cfg.split.seed == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        carved = DataConfig(
            **{**base, "split": {"protocol": "presplit", "seed": 2020, "valid_from_train_ratio": 0.1}}
        )
    assert carved.split.seed == 2020
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: popularity}\ndata: {source: user_lines, path: x, split: {seed: 5}}\n")
    with pytest.warns(UserWarning, match=rf"^{path}: data\.split\.seed=5 draws only"):
        assert load_config(path).data.split.seed == 0
