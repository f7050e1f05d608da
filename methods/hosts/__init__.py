"""Backbone hosts: named insertion sites on timm models, one file per family."""
from .base import (HOSTS, LINEAR_SITES, LINEAR_TARGETS, TOKEN_SITES, BackboneHost, BlockInfo,
                   ChannelNorm, CheckpointError, LayerDelta, Role, Site, SiteLinear, SiteMixin,
                   SiteNotSupported, StageInfo, check_targets, get_family, register_family,
                   split_patches)
from .convnext import ConvNeXtHost
from .swin import SwinHost
from .vit import ViTHost
from .vmamba import VMambaHost

__all__ = ["BackboneHost", "BlockInfo", "ChannelNorm", "CheckpointError", "ConvNeXtHost", "HOSTS",
           "LayerDelta", "LINEAR_SITES", "LINEAR_TARGETS", "Role", "Site", "SiteLinear", "SiteMixin",
           "SiteNotSupported", "StageInfo", "SwinHost", "TOKEN_SITES", "ViTHost", "VMambaHost", "check_targets",
           "get_family", "register_family", "split_patches"]
