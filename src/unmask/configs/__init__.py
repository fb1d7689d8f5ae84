"""The presets: small YAML files of a run's configuration, each listing only what differs from the
defaults of :class:`unmask.config.Config` (read by :func:`unmask.config.load_preset`)."""

from importlib import resources


def preset_names() -> list[str]:
    """The presets shipped with unmask, by name."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
