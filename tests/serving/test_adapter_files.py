"""Which files an adapter load reads: only what was checked, only from inside the adapter directory."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from serving.engine import AdapterLoadError, Engine, _copy_inside


@pytest.fixture(scope="module")
def places(tmp_path_factory, adapter_dir) -> tuple[Path, Path]:
    """(the engine's adapter directory, holding med-v0001; a directory outside it, holding med-v0002)."""
    inside = tmp_path_factory.mktemp("inside")
    shutil.copytree(adapter_dir / "med-v0001", inside / "med-v0001")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(adapter_dir / "med-v0002", outside / "med-v0002")
    return inside, outside


@pytest.fixture(scope="module")
def engine(tiny_model_dir, places):
    running = Engine(str(tiny_model_dir), "careloop-demo-tiny", True, adapter_dir=places[0])
    yield running
    running.shutdown()


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def _loaded(engine: Engine, name: str) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(engine.model, adapter_name=name)


def _same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_a_directory_swapped_for_a_symlink_after_the_check_loads_nothing_from_outside(engine, places, monkeypatch):
    """Issue 31, 11: the load checked the resolved path but PEFT read the path as given, later, on the
    engine thread: a directory swapped for a symlink in between loaded an adapter from outside the
    adapter directory. Here the swap happens at the worst moment, just before PEFT reads."""
    inside, outside = places
    target = inside / "swapped"
    shutil.copytree(inside / "med-v0001", target)
    attach = engine._attach_adapter

    def swap_then_attach(name: str, path: str) -> None:
        shutil.rmtree(target)
        target.symlink_to(outside / "med-v0002", target_is_directory=True)
        attach(name, path)

    monkeypatch.setattr(engine, "_attach_adapter", swap_then_attach)
    asyncio.run(engine.load_adapter("swapped", str(target)))

    assert target.is_symlink(), "the swap happened between the check and the load"
    loaded = _loaded(engine, "swapped")
    assert _same(loaded, _weights(inside / "med-v0001")), "the engine loaded what it checked"
    assert not _same(loaded, _weights(outside / "med-v0002"))
    assert engine.adapters["swapped"] == str(target)


def test_links_leading_out_of_the_adapter_directory_are_refused_and_links_inside_it_work(engine, places):
    inside, outside = places
    (inside / "escape").symlink_to(outside / "med-v0002", target_is_directory=True)
    weights_out = inside / "weights-out"
    weights_out.mkdir()
    shutil.copy(inside / "med-v0001" / "adapter_config.json", weights_out)
    (weights_out / "adapter_model.safetensors").symlink_to(outside / "med-v0002" / "adapter_model.safetensors")
    (inside / "alias").symlink_to(inside / "med-v0001", target_is_directory=True)
    no_weights = inside / "no-weights"
    no_weights.mkdir()
    shutil.copy(inside / "med-v0001" / "adapter_config.json", no_weights)

    with pytest.raises(AdapterLoadError, match="inside the adapter directory"):
        asyncio.run(engine.load_adapter("escape", str(inside / "escape")))
    with pytest.raises(AdapterLoadError, match="links outside the adapter directory"):
        asyncio.run(engine.load_adapter("weights-out", str(weights_out)))
    with pytest.raises(AdapterLoadError, match="no adapter_model.safetensors"):
        asyncio.run(engine.load_adapter("no-weights", str(no_weights)))
    assert not {"escape", "weights-out", "no-weights"} & set(engine.adapters)

    asyncio.run(engine.load_adapter("alias", str(inside / "alias")))  # a link that stays inside is fine
    assert _same(_loaded(engine, "alias"), _weights(inside / "med-v0001"))
    assert engine.adapters["alias"] == str(inside / "med-v0001")


def test_a_link_swapped_in_between_the_resolve_and_the_open_is_not_followed(places, tmp_path, monkeypatch):
    """The narrowest window left: the copy resolves a file's path, then opens it. Opened one component
    at a time with no symlink followed, a directory or file that became a link in between is not read."""
    inside, outside = places
    (inside / "became-link").symlink_to(outside / "med-v0002", target_is_directory=True)
    (inside / "file-became-link").symlink_to(outside / "med-v0002" / "adapter_config.json")
    copy = tmp_path / "copy"
    copy.mkdir()
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: self.absolute())  # resolved before the swap
    assert _copy_inside(inside, inside / "became-link" / "adapter_config.json", copy) is False
    with pytest.raises(AdapterLoadError, match="without following a link"):
        _copy_inside(inside, inside / "file-became-link", copy)
    assert not list(copy.iterdir())
