"""Errors about a setting, which the command line reports under the name of its flag.

Library code knows settings (`Pose2DConfig.person`, `hrnet_weights`), not flags: it raises `SettingError` naming the
setting, and `pipeline.cli` prints the flag that sets it instead (`--person`, `--hrnet-weights`). A library user sees
the setting's name.
"""
from __future__ import annotations


class SettingError(ValueError):
    """A setting's value cannot be used: `setting` is the config field's name, `message` says what is wrong and what
    to do."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message
