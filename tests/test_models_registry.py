"""The model registry and build_model."""

from __future__ import annotations

import sys

import pydantic
import pytest
import torch

from recsys.embedding import IdEmbedding
from recsys.models import REGISTRY, LightGCNConfig, build_model


def test_registry_keys_match_config_names():
    assert set(REGISTRY) >= {"popularity", "mf_bpr", "lightgcn", "rp3beta"}
    for name, cls in REGISTRY.items():
        assert cls.config_cls().name == name


def test_build_model_from_name_dict_and_config():
    assert build_model("mf_bpr", 3, 4).config.dim == 64
    assert build_model({"name": "lightgcn", "layers": 2}, 3, 4).config.layers == 2
    assert build_model(LightGCNConfig(dim=8), 3, 4).config.dim == 8


def test_build_model_errors_name_the_problem():
    with pytest.raises(KeyError, match="known models"):
        build_model("nope", 3, 4)
    with pytest.raises(pydantic.ValidationError, match="layerz"):
        build_model({"name": "lightgcn", "layerz": 2}, 3, 4)
    with pytest.raises(pydantic.ValidationError, match="dim"):
        build_model({"name": "mf_bpr", "dim": "wide"}, 3, 4)


def test_every_id_table_is_an_id_embedding():
    """The DNIS seam: all learned id tables are IdEmbedding modules."""
    for name in ("mf_bpr", "lightgcn"):
        model = build_model(name, 3, 4)
        tables = [m for m in model.modules() if isinstance(m, IdEmbedding)]
        assert {id(t.weight) for t in tables} == {id(p) for p in model.parameters()}


def test_id_embedding():
    emb = IdEmbedding(10, 4, init="xavier_uniform")
    assert emb(torch.tensor([1, 2])).shape == (2, 4)
    assert emb.all() is emb.weight
    assert "xavier_uniform" in repr(emb)
    with pytest.raises(ValueError):
        IdEmbedding(0, 4)


@pytest.mark.parametrize("name", ["popularity", "mf_bpr", "lightgcn", "dccf", "sasrec"])
def test_inference_embeddings_are_copies_without_gradient(name):
    """Evaluation and serving take these tensors: they must not carry the graph (``.numpy()`` failed on
    MF-BPR's) nor alias the trained table (normalising them in place changed MF-BPR, SASRec and popularity)."""
    import numpy as np
    import scipy.sparse as sp

    train = sp.csr_matrix(
        np.array([[1, 1, 0, 0, 0, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1]])
    )
    model = build_model({"name": name, "dim": 4} if name != "popularity" else name, 4, 6)
    model.prepare(train.astype(np.float32))
    model.eval()
    before = model.item_embeddings().clone()
    items = model.item_embeddings()
    assert not items.requires_grad
    items.mul_(0.0)
    torch.testing.assert_close(model.item_embeddings(), before, rtol=0, atol=0)
    if name != "sasrec":  # its queries need histories (tested with the model)
        assert not model.scorer()(torch.arange(2)).requires_grad


def test_model_configs_refuse_infinite_numbers_and_empty_layers():
    for raw in ({"name": "mf_bpr", "init_std": float("inf")}, {"name": "lightgcn", "reg": float("nan")}):
        with pytest.raises(pydantic.ValidationError, match="finite number"):
            build_model(raw, 3, 4)  # init_std: .inf gave NaN scores
    for hidden in ([0], [-3], [64, 0]):
        with pytest.raises(pydantic.ValidationError, match="greater than or equal to 1"):
            build_model({"name": "two_tower", "hidden": hidden}, 3, 4)  # [0] was a constant model


@pytest.fixture
def registry():
    """The registry, restored after the test: a test's model must not leak into the others."""
    before = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(before)
    sys.modules.pop("recsys_plugin_test", None)  # the next test's package is another folder's


def _tiny_model(key: str):
    from typing import Literal

    from recsys.models import ModelConfig, Recommender

    class TinyConfig(ModelConfig):
        name: Literal[key] = key  # type: ignore[valid-type]
        dim: int = 4

    class Tiny(Recommender):
        config_cls = TinyConfig

    return Tiny


def test_a_registered_model_is_built_and_configured_like_a_built_in_one(registry):
    from recsys.config import ConfigError, validate_config
    from recsys.models import register_model

    tiny = _tiny_model("tiny")
    assert register_model(tiny) is tiny  # usable as a decorator
    assert isinstance(build_model({"name": "tiny", "dim": 8}, 3, 4), tiny)
    raw = {"data": {"source": "interactions", "path": "x.csv"}, "model": {"name": "tiny"}}
    assert validate_config(raw).model == {"name": "tiny", "dim": 4}  # its defaults filled in and logged
    with pytest.raises(ConfigError, match="dimm"):  # its own config class checks the keys
        validate_config({**raw, "model": {"name": "tiny", "dimm": 8}})
    assert register_model(tiny) is tiny  # the same class again: nothing changes


def test_registering_a_taken_name_or_an_unnamed_model_is_refused(registry):
    from recsys.models import MFBPR, ModelConfig, Recommender, register_model

    other = _tiny_model("mf_bpr")
    with pytest.raises(
        ValueError, match=r"'mf_bpr' is taken by recsys\.models\.mf_bpr:MFBPR; give .*replace=True"
    ):
        register_model(other)
    assert registry["mf_bpr"] is MFBPR
    register_model(other, replace=True)
    assert registry["mf_bpr"] is other

    class NoName(Recommender):
        config_cls = ModelConfig  # `name: str` without a default: no key to register under

    with pytest.raises(TypeError, match="default of name"):
        register_model(NoName)
    with pytest.raises(TypeError, match="subclass of recsys.models.Recommender"):
        register_model(torch.nn.Linear)


_PLUGIN = """
from typing import Literal

import torch

from recsys.models import ModelConfig, Recommender
from recsys.embedding import IdEmbedding


class DotConfig(ModelConfig):
    name: Literal["plugin_dot"] = "plugin_dot"
    dim: int = 8


class Dot(Recommender):
    config_cls = DotConfig

    def __init__(self, n_users, n_items, config):
        super().__init__(n_users, n_items, config)
        self.users = IdEmbedding(n_users, config.dim, init="normal", init_std=0.1, ids="users")
        self.items = IdEmbedding(n_items, config.dim, init="normal", init_std=0.1, ids="items")

    def loss(self, batch):
        u, i, j = self.users(batch["users"]), self.items(batch["pos"]), self.items(batch["neg"])
        bpr = torch.nn.functional.softplus((u * j).sum(-1) - (u * i).sum(-1)).mean()
        return bpr, {"bpr": bpr}

    @torch.no_grad()
    def query_embeddings(self, users):
        return self.users(users)

    @torch.no_grad()
    def item_embeddings(self):
        return self.items.all().clone()


class NotAModel:
    pass
"""


def _install_plugin(root, entry_points: str):
    """A package as pip would leave it: its module, and a dist-info folder declaring its entry points."""
    (root / "recsys_plugin_test.py").write_text(_PLUGIN)
    info = root / "recsys_plugin_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recsys-plugin-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[recsys.models]\n{entry_points}\n")


def test_a_model_an_installed_package_offers_is_trained_evaluated_and_indexed_from_the_cli(
    registry, tmp_path, monkeypatch, capsys
):
    import yaml

    from recsys.cli import main
    from recsys.models import known_model_names
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    _install_plugin(tmp_path, "plugin_dot = recsys_plugin_test:Dot")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin_dot" in known_model_names() and "plugin_dot" not in registry  # offered, not yet loaded
    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=2)
    raw["model"] = {"name": "plugin_dot", "dim": 4}
    raw["tracking"] = {"experiment": "plugin"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert registry["plugin_dot"].__module__ == "recsys_plugin_test"
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    assert "ndcg@10" in capsys.readouterr().out
    assert main(["index", "--run", run_id, "--out", str(tmp_path / "index")]) == 0
    assert (tmp_path / "index" / "manifest.json").is_file()


def test_an_offered_model_that_does_not_load_is_named_with_its_entry_point(
    registry, tmp_path, monkeypatch, capsys
):
    from recsys.cli import main
    from recsys.config import ConfigError, validate_config
    from recsys.models import build_model

    _install_plugin(
        tmp_path,
        "broken = recsys_plugin_test:Missing\nnot_a_model = recsys_plugin_test:NotAModel\n"
        "misnamed = recsys_plugin_test:Dot",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {"data": {"source": "interactions", "path": "x.csv"}, "model": {"name": "broken"}}
    with pytest.raises(ConfigError, match=r"model\.name: model 'broken': entry point broken = "):
        validate_config(raw)
    with pytest.raises(ImportError, match="subclass of recsys.models.Recommender"):
        build_model("not_a_model", 3, 4)
    with pytest.raises(ImportError, match="whose config name is 'plugin_dot'"):
        build_model("misnamed", 3, 4)
    with pytest.raises(ConfigError, match="allowed values: .*misnamed"):  # offered names are listed
        validate_config({**raw, "model": {"name": "nope"}})
    assert main(["config", "keys", "--model", "broken"]) == 2  # one error line, not a traceback
    assert "model 'broken': entry point broken = recsys_plugin_test:Missing" in capsys.readouterr().err


def test_a_config_that_could_not_select_its_model_or_drops_the_checks_is_refused(registry):
    from typing import Literal

    import pydantic

    from recsys.models import ModelConfig, Recommender, register_model

    class Plain(pydantic.BaseModel):  # no ModelConfig: unknown keys and booleans for numbers would pass
        name: Literal["plain"] = "plain"

    class StrName(ModelConfig):  # any name validates: `build_model(StrName(name="other"))` found no model
        name: str = "strname"

    class Mismatch(ModelConfig):  # registered as "y", every config naming "y" fails: "Input should be 'x'"
        name: Literal["x"] = "y"

    for config, match in (
        (Plain, "subclass of recsys.models.ModelConfig"),
        (StrName, "the one value and the default"),
        (Mismatch, "the one value and the default"),
    ):
        model = type("M", (Recommender,), {"config_cls": config})
        with pytest.raises(TypeError, match=match):
            register_model(model)
    assert not {"plain", "strname", "x", "y"} & set(registry)


def test_two_packages_offering_one_name_for_different_classes_is_an_error_naming_both(
    registry, tmp_path, monkeypatch
):
    from recsys.models import model_class

    for n, target in ((1, "Dot"), (2, "NotAModel")):
        root = tmp_path / f"site{n}"
        root.mkdir()
        _install_plugin(root, f"plugin_dot = recsys_plugin_test:{target}")
        info = root / "recsys_plugin_test-0.1.dist-info"
        info.rename(root / f"recsys_plugin_test{n}-0.1.dist-info")
        (root / f"recsys_plugin_test{n}-0.1.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: recsys-plugin-test{n}\nVersion: 0.1\n"
        )
        monkeypatch.syspath_prepend(str(root))
    # which one loaded depended on the order of sys.path, without a word
    with pytest.raises(
        ImportError, match=r"offered by two installed packages .*recsys-plugin-test\d .*recsys-plugin-test\d"
    ):
        model_class("plugin_dot")


def test_registering_a_name_a_package_offers_for_another_class_is_refused(registry, tmp_path, monkeypatch):
    from recsys.models import register_model

    _install_plugin(tmp_path, "tiny = somewhere_else:Tiny")
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = _tiny_model("tiny")
    # a run trained with this class would be loaded by every other process as the package's model
    with pytest.raises(ValueError, match=r"offered by an installed package for somewhere_else:Tiny"):
        register_model(tiny)
    assert register_model(tiny, replace=True) is tiny
    assert register_model(tiny) is tiny  # the same class again: nothing changes, nothing refused


def test_the_reference_of_a_registered_model_shows_defaults_as_yaml_holds_them(registry):
    import enum
    from pathlib import Path
    from typing import Literal

    from recsys.config_reference import model_keys, render
    from recsys.models import ModelConfig, Recommender, register_model

    class Mode(enum.Enum):
        fast = "fast"

    class OddConfig(ModelConfig):
        name: Literal["odd"] = "odd"
        where: Path = Path("cache/x")
        """A folder."""
        tags: set[str] = {"b"}
        sep: str = ""
        mode: Mode = Mode.fast

    register_model(type("Odd", (Recommender,), {"config_cls": OddConfig}))
    keys = {k.key: k for k in model_keys("odd")}
    assert (keys["model.where"].default, keys["model.tags"].default, keys["model.mode"].default) == (
        "default `cache/x`",
        'default `["b"]`',
        "default `fast`",
    )
    assert keys["model.where"].doc == ["A folder."]
    assert keys["model.sep"].default == 'default `""`'  # an empty text shown bare would be an empty default
    assert render(["odd", "odd"]).count("## `model.name: odd`") == 1


def test_a_package_cannot_replace_a_built_in_model(registry, tmp_path, monkeypatch):
    from recsys.models import MFBPR, model_class

    # every run of mf_bpr would load as the package's class in a process that has the package installed
    _install_plugin(tmp_path, "mf_bpr = recsys_plugin_test:Dot")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert model_class("mf_bpr") is MFBPR


def test_a_package_may_name_its_model_where_it_re_exports_it(registry, tmp_path, monkeypatch):
    """`pkg:Dot` for a class defined in `pkg.models`, the usual layout: the package's own model was refused as
    "offered for another class", since its text is not `pkg.models:Dot`."""
    from recsys.models import model_class, register_model

    package = tmp_path / "recsys_plugin_pkg"
    package.mkdir()
    (package / "models.py").write_text(_PLUGIN)
    (package / "__init__.py").write_text("from recsys_plugin_pkg.models import Dot\n")
    info = tmp_path / "recsys_plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recsys-plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[recsys.models]\nplugin_dot = recsys_plugin_pkg:Dot\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cls = model_class("plugin_dot")
        assert cls.__module__ == "recsys_plugin_pkg.models"
        registry.pop("plugin_dot")
        assert register_model(cls) is cls  # registering it by hand is no conflict with its own offer
    finally:
        for module in ("recsys_plugin_pkg", "recsys_plugin_pkg.models"):
            sys.modules.pop(module, None)


def test_a_conflict_over_one_name_leaves_the_other_names_usable(registry, tmp_path, monkeypatch):
    from recsys.models import known_model_names, model_class, register_model

    for n, target in ((1, "Dot"), (2, "NotAModel")):
        root = tmp_path / f"site{n}"
        (root / f"recsys_plugin_test{n}-0.1.dist-info").mkdir(parents=True)
        (root / "recsys_plugin_test.py").write_text(_PLUGIN)
        info = root / f"recsys_plugin_test{n}-0.1.dist-info"
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: recsys-plugin-test{n}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[recsys.models]\nplugin_dot = recsys_plugin_test:{target}\n")
        monkeypatch.syspath_prepend(str(root))
    assert "plugin_dot" in known_model_names()
    assert model_class("mf_bpr").__name__ == "MFBPR"
    register_model(_tiny_model("tiny"))  # registering another name is not blocked by the conflict
    with pytest.raises(ImportError, match="offered by two installed packages"):
        model_class("plugin_dot")
