"""Backbone hosts: named insertion sites on timm models, one file per family."""
from .base import (HOSTS, LINEAR_SITES, TOKEN_SITES, BackboneHost, BlockInfo, ChannelNorm, CheckpointError,
                   Role, Site, SiteLinear, SiteMixin, SiteNotSupported, StageInfo, get_family,
                   register_family, split_patches)
from .convnext import ConvNeXtHost
from .swin import SwinHost
from .vit import ViTHost

__all__ = ["BackboneHost", "BlockInfo", "ChannelNorm", "CheckpointError", "ConvNeXtHost", "HOSTS",
           "LINEAR_SITES", "Role", "Site", "SiteLinear", "SiteMixin", "SiteNotSupported", "StageInfo",
           "SwinHost", "TOKEN_SITES", "ViTHost", "get_family", "register_family", "split_patches"]
