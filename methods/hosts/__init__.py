"""Backbone hosts: named insertion sites on timm Swin, ConvNeXt and ViT."""
from .base import (BackboneHost, BlockInfo, ChannelNorm, LINEAR_SITES, Site, SiteLinear, SiteNotSupported,
                   StageInfo, TOKEN_SITES, split_patches)
from .convnext import ConvNeXtHost
from .swin import SwinHost
from .vit import ViTHost

HOSTS: dict[str, type[BackboneHost]] = {h.family: h for h in (SwinHost, ConvNeXtHost, ViTHost)}

__all__ = ["BackboneHost", "BlockInfo", "ChannelNorm", "ConvNeXtHost", "HOSTS", "LINEAR_SITES", "Site",
           "SiteLinear", "SiteNotSupported", "StageInfo", "SwinHost", "TOKEN_SITES", "ViTHost", "split_patches"]
