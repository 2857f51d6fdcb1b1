"""What every command group shares: finding the node's configuration."""

from __future__ import annotations

import argparse
import os

from postroom import config


def load_config(args: argparse.Namespace) -> config.Config:
    """The node configuration named by ``--config`` (or the defaults)."""
    path = args.config
    if path is None and os.path.exists("postroom.toml"):
        path = "postroom.toml"
    return config.load(path)
