"""The npe2 manifest is found through the installed distribution and every command resolves."""
import importlib

from npe2 import PluginManifest


def test_manifest_valid_and_commands_importable():
    pm = PluginManifest.from_distribution("napari-pancakes")
    assert pm.name == "napari-pancakes"
    assert pm.contributions.widgets and pm.contributions.sample_data
    for cmd in pm.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.python_name


def test_bundled_files_present():
    import napari_pancakes
    from importlib.resources import files

    root = files(napari_pancakes)
    assert root.joinpath("napari.yaml").is_file()
    assert root.joinpath("weights", "pancakes_default.safetensors").is_file()


def test_manifest_has_the_refine_widget():
    pm = PluginManifest.from_distribution("napari-pancakes")
    widgets = {w.display_name: w.command for w in pm.contributions.widgets}
    assert widgets["Click refinement"] == "napari-pancakes.refine"
    command = next(c for c in pm.contributions.commands if c.id == "napari-pancakes.refine")
    assert command.python_name == "napari_pancakes.napari.refine_widget:RefineWidget"
