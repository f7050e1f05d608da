"""Backbone hosts: the named insertion sites a PEFT method attaches modules to.

A host wraps a timm backbone of one family (Swin, ConvNeXt, ViT, VMamba) and gives every method the
same vocabulary of sites, so that no method touches a block's code. To keep timm's parameter
names (and so timm's and the original releases' checkpoints) intact, the host re-classes each
block in place to a site-aware subclass whose forward is the timm forward plus calls into the
modules attached at each site; with nothing attached the output is timm's.

A family is one file (like a timm model file): its host class, registered with
``@register_family``, owns the timm arguments its dense mode needs, its checkpoint filter and
release naming, and its placement roles (e.g. "serial adapters after the residual sums"),
which methods ask for instead of keeping per-family site tables.

Calling convention for modules at token sites: ``module(x, hw) -> x`` with ``x`` of shape
(B, N, C) and ``hw = (H, W)`` the patch grid; the patch tokens are the last ``H * W`` of the
N tokens (ViT keeps its class token, and any prompts, in front of them).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class Site(str, enum.Enum):
    """Where a module runs. Transformer blocks: the block output is the MLP residual sum."""

    ATTN_IN = "attn_in"  # normalised input of the token mixer (after norm1), before it runs
    ATTN_BRANCH = "attn_branch"  # token-mixer branch after its drop path, before the residual sum
    ATTN_OUT = "attn_out"  # stream right after the attention residual sum
    MLP_IN = "mlp_in"  # normalised input of the MLP (after norm2), before it runs
    MLP_BRANCH = "mlp_branch"  # MLP branch after its drop path, before the residual sum
    MLP_PARALLEL = "mlp_parallel"  # f(stream before the MLP) added to the MLP residual sum
    BLOCK_OUT = "block_out"  # stream after the whole block
    QKV = "qkv"  # additive branch on the attention qkv linear
    IN_PROJ = "in_proj"  # additive branch on a state-space mixer's input projection (VMamba)
    PROJ = "proj"  # additive branch on the token mixer's output projection
    FC1 = "fc1"  # additive branch on the first MLP linear
    FC2 = "fc2"  # additive branch on the second MLP linear
    DWCONV = "dwconv"  # additive branch on a conv block's depthwise conv (its token mixer)
    PROMPTS = "prompts"  # tokens appended to the block's input sequence (removed after it)
    STAGE_OUT = "stage_out"  # a stage's output on its way to the neck, replacing its output norm


class Role(str, enum.Enum):
    """A placement a method asks for; each family says which sites realise it."""

    SERIAL = "serial"  # adapters in series after the block's residual sums (ParaX, Mona)
    BRANCH = "branch"  # inside each residual branch, after its drop path (LoRand)


TOKEN_SITES = frozenset({
    Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
    Site.MLP_PARALLEL, Site.BLOCK_OUT,
})
# Sites whose modules are additive branches of a block layer (a Linear, or the depthwise Conv2d).
LINEAR_SITES = frozenset({Site.QKV, Site.IN_PROJ, Site.PROJ, Site.FC1, Site.FC2, Site.DWCONV})
# The linears a weight-update method (LoRA, SNELL) names in its ``targets``:
# name -> (linear site, which third of the fused qkv output; None = the whole output).
LINEAR_TARGETS = {"q": (Site.QKV, 0), "k": (Site.QKV, 1), "v": (Site.QKV, 2),
                  "proj": (Site.PROJ, None), "fc1": (Site.FC1, None), "fc2": (Site.FC2, None),
                  "in_proj": (Site.IN_PROJ, None)}


def check_targets(method: str, targets) -> tuple[str, ...]:
    """``targets`` as a tuple of distinct LINEAR_TARGETS names, else a ValueError naming them."""
    targets = tuple(targets)
    if (not targets or len(set(targets)) != len(targets)
            or any(t not in LINEAR_TARGETS for t in targets)):
        raise ValueError(f"{method}: targets must be distinct names among "
                         f"{list(LINEAR_TARGETS)}, got {targets}")
    return targets


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message says which keys and why."""


class SiteNotSupported(ValueError):
    """The backbone family has no such site (or role)."""


@dataclass(frozen=True)
class StageInfo:
    index: int
    dim: int
    depth: int
    reduction: int  # stride of the stage output w.r.t. the input image


@dataclass(frozen=True)
class BlockInfo:
    stage: int
    index: int  # position inside its stage
    dim: int
    module: nn.Module
    path: str = ""  # its module path in the model (its key prefix in our naming)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of tokens (B, L, C); takes the site signature (x, hw)."""

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        return super().forward(x)


class SiteLinear(nn.Linear):
    """nn.Linear with additive branches: y = W x + b + sum(branch(x)). Keeps weight/bias names."""

    peft_branches: nn.ModuleList
    plain_class = nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        for branch in self.peft_branches:
            out = out + branch(x)
        return out


class SiteConv2d(nn.Conv2d):
    """nn.Conv2d with additive branches, as SiteLinear (for weight updates of any backbone
    layer: a patch embedding, a depthwise conv). Keeps weight/bias names."""

    peft_branches: nn.ModuleList
    plain_class = nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.weight, self.bias)
        for branch in self.peft_branches:
            out = out + branch(x)
        return out


class LayerDelta(nn.Module):
    """A layer branch that is a weight (and bias) update: its output is the Linear's or
    Conv2d's op with ``delta_weight()`` and ``delta_bias()``, which ``fold_branches`` adds in."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.shape = tuple(layer.weight.shape)
        self.weight_numel = layer.weight.numel()
        self.conv = (dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                          groups=layer.groups) if isinstance(layer, nn.Conv2d) else None)
        if self.conv is not None and layer.padding_mode != "zeros":
            raise ValueError(f"a weight update on a conv with padding_mode "
                             f"{layer.padding_mode!r} (expected 'zeros')")

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def delta_bias(self) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.linear(x, self.delta_weight(), self.delta_bias())
        return F.conv2d(x, self.delta_weight(), self.delta_bias(), **self.conv)


BRANCHED = {nn.Linear: SiteLinear, nn.Conv2d: SiteConv2d}  # plain layer -> its branched class


class SiteMixin:
    """Site dispatch for re-classed timm blocks; the attached modules live in ``peft_sites``."""

    peft_sites: nn.ModuleDict

    def _site(self, site: Site, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        for module in self.peft_sites[site.value]:
            x = module(x, hw)
        return x

    def _has(self, site: Site) -> bool:
        return len(self.peft_sites[site.value]) > 0

    def _parallel(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor | None:
        out = None
        for module in self.peft_sites[Site.MLP_PARALLEL.value]:
            y = module(x, hw)
            out = y if out is None else out + y
        return out

    def _prompt_tokens(self, batch: int) -> torch.Tensor | None:
        modules = self.peft_sites[Site.PROMPTS.value]
        if not len(modules):
            return None
        return torch.cat([m(batch) for m in modules], dim=1)


def _branched(layer: nn.Module, where: str) -> nn.Module:
    """``layer`` re-classed in place to its branched class (BRANCHED)."""
    if type(layer) in BRANCHED.values():
        return layer
    if type(layer) not in BRANCHED:
        raise TypeError(f"{where}: expected an nn.Linear or nn.Conv2d to host branches, got "
                        f"{type(layer).__name__}")
    layer.__class__ = BRANCHED[type(layer)]
    layer.peft_branches = nn.ModuleList()
    return layer


class BackboneHost:
    """One timm backbone plus its sites. Subclasses describe a family.

    Attributes the subclasses fill: ``family``, ``sites`` (supported), ``roles``, ``stages``,
    ``blocks``. Everything a method adds lives in modules registered on ``self.model`` (so
    ``state_dict``, ``.to()`` and optimisers see it): site modules inside the blocks, shared
    state in ``model.peft_shared``, stage-output modules in ``model.peft_stage_out``.
    """

    family: str = ""
    display_name: str = ""  # the family as messages name it
    norm_eps: float = 1e-6  # eps of the family's LayerNorms (and of norms methods add to it)
    dense_out_norms: bool = False  # dense mode ends each stage in a (frozen) LayerNorm
    classifier_prefixes: tuple[str, ...] = ("head.",)  # checkpoint keys only classifiers use
    sites: frozenset[Site] = frozenset()
    roles: dict[Role, tuple[Site, ...]] = {}  # placement role -> its sites, in block order
    linear_paths: dict[Site, str] = {}  # site -> attribute path inside a block
    block_class: type = nn.Module  # the site-aware subclass blocks are re-classed to

    # -- the family's timm model and checkpoints -----------------------------------------------
    @classmethod
    def timm_kwargs(cls, dense: bool) -> dict[str, Any]:
        """timm arguments of the family's dense (any input size) or classification mode."""
        return {}

    @staticmethod
    def checkpoint_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """A checkpoint in the original release's (or timm's) naming -> timm's naming."""
        return state

    @staticmethod
    def release_key(key: str) -> str:
        """One backbone key of ours (timm's naming) in the original release's naming."""
        return key

    @classmethod
    def from_release(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Conversions a release's checkpoint needs before the checkpoint filter."""
        return state

    @classmethod
    def to_release(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Conversions (beyond key renaming) that write a state in the release's form."""
        return state

    @staticmethod
    def release_stage_attr(name: str, stage: int) -> str:
        """How the release holds a per-stage module named ``name`` (a ModuleList by default)."""
        return f"{name}.{stage}"

    @classmethod
    def has(cls, need: "Site | Role") -> bool:
        """Whether the family offers a site or a placement role."""
        return need in cls.roles if isinstance(need, Role) else Site(need) in cls.sites

    def __init__(self, model: nn.Module, name: str, dense: bool = True):
        self.model = model
        self.name = name
        self.dense = dense
        self.stages: list[StageInfo] = self._describe_stages()
        paths = {id(m): name for name, m in model.named_modules()}
        self.blocks: list[BlockInfo] = [dataclasses.replace(b, path=paths[id(b.module)])
                                        for b in self._iter_blocks()]
        for info in self.blocks:
            block = info.module
            if not isinstance(block, self.block_class):
                block.__class__ = self.block_class
                block.peft_sites = nn.ModuleDict({s.value: nn.ModuleList() for s in Site
                                                  if s in TOKEN_SITES or s is Site.PROMPTS})
        if dense and self.dense_out_norms:
            # As OpenMMLab's dense backbones: a norm on every stage output (part of the
            # backbone, trained only by full fine-tuning) and no classification-only norm.
            self._drop_classifier_norm()
            model.out_norms = nn.ModuleList([ChannelNorm(s.dim, eps=self.norm_eps)
                                             for s in self.stages])
        model.peft_shared = nn.ModuleDict()
        model.peft_stage_out = nn.ModuleList([nn.ModuleList() for _ in self.stages])
        self._attached: list[nn.Module] = []  # everything add()/add_shared() registered
        self._replaced_norms: dict[int, nn.Module] = {}  # stage -> output norm a method replaced
        self.method = None  # set by apply_method

    # -- family-specific ---------------------------------------------------------------------
    def _describe_stages(self) -> list[StageInfo]:
        raise NotImplementedError

    def _iter_blocks(self) -> Iterator[BlockInfo]:
        raise NotImplementedError

    def _forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs in (B, C, H, W), before stage-output norms and modules."""
        raise NotImplementedError

    def _drop_classifier_norm(self) -> None:
        """Dense mode: remove the norm only the classifier uses."""
        raise NotImplementedError

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logits features (B, C) for classification."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    # -- attaching ---------------------------------------------------------------------------
    def require(self, *needs: "Site | Role", method: str = "") -> None:
        missing = [n.value for n in needs if not self.has(n)]
        if missing:
            who = f"{method}: " if method else ""
            raise SiteNotSupported(
                f"{who}{self.family} backbone '{self.name}' has no site or role {missing}; "
                f"its sites are {sorted(s.value for s in self.sites)}, its roles "
                f"{sorted(r.value for r in self.roles)}")

    def sites_of(self, role: Role, method: str = "") -> tuple[Site, ...]:
        """The sites realising ``role`` on this family, in block order."""
        self.require(role, method=method)
        return self.roles[role]

    def release_block(self, block: BlockInfo) -> str:
        """The block's key prefix in the original release's naming."""
        return self.release_key(block.path + ".")[:-1]

    def add(self, site: Site, module: nn.Module, block: BlockInfo | None = None,
            stage: int | None = None) -> nn.Module:
        """Attach ``module`` at ``site`` of ``block`` (token/linear/prompt sites) or of ``stage``."""
        site = Site(site)
        self.require(site)
        if site is Site.STAGE_OUT:
            if stage is None:
                raise ValueError("stage_out modules need stage=<index>")
            out_norms = getattr(self.model, "out_norms", None)
            if out_norms is not None and stage not in self._replaced_norms:
                # The stage's output goes through the method's modules instead of the frozen
                # output norm (e.g. ParaX's trainable norm): one norm, as in its release.
                self._replaced_norms[stage] = out_norms[stage]
                out_norms[stage] = nn.Identity()
            self.model.peft_stage_out[stage].append(module)
        elif block is None:
            raise ValueError(f"site {site.value} needs block=<BlockInfo>")
        elif site in LINEAR_SITES:
            path = self.linear_paths[site]
            parent_path, _, attr = path.rpartition(".")
            parent = block.module.get_submodule(parent_path) if parent_path else block.module
            _branched(getattr(parent, attr), f"{self.family} block {path}").peft_branches.append(module)
        else:
            block.module.peft_sites[site.value].append(module)
        self._attached.append(module)
        return module

    def add_to_layer(self, path: str, module: nn.Module) -> nn.Module:
        """Attach ``module`` as an additive branch of the backbone's Linear or Conv2d at module
        path ``path`` (any layer, not only a site's: a weight update of the whole backbone)."""
        _branched(self.model.get_submodule(path), f"{self.name} {path}").peft_branches.append(module)
        self._attached.append(module)
        return module

    def add_shared(self, name: str, module: nn.Module) -> nn.Module:
        """Register state a method shares across sites (e.g. ParaX expert centers)."""
        if name in self.model.peft_shared:
            raise ValueError(f"shared state '{name}' is already registered on {self.name}")
        self.model.peft_shared[name] = module
        self._attached.append(module)
        return module

    def remove_shared(self, name: str) -> None:
        """Drop shared state ``add_shared`` registered (a merge that folded what it served)."""
        module = self.model.peft_shared.pop(name)
        self._attached = [m for m in self._attached if m is not module]

    def linear(self, block: BlockInfo, site: Site) -> nn.Linear:
        """The frozen linear layer behind a linear site (e.g. for merging)."""
        self.require(site)
        return block.module.get_submodule(self.linear_paths[Site(site)])

    def target_rows(self, block: BlockInfo, targets: tuple[str, ...], method: str = ""
                    ) -> dict[Site, tuple[nn.Linear, list[tuple[int, int]]]]:
        """Per linear site the ``targets`` (LINEAR_TARGETS names) touch, in their order: its
        linear and the (first row, rows) of its output each target covers (q, k, v: a third
        of the fused qkv, in q, k, v order)."""
        self.require(*{LINEAR_TARGETS[t][0] for t in targets}, method=method)
        out: dict[Site, tuple[nn.Linear, list[tuple[int, int]]]] = {}
        for site in dict.fromkeys(LINEAR_TARGETS[t][0] for t in targets):
            linear = self.linear(block, site)
            thirds = sorted(LINEAR_TARGETS[t][1] for t in targets
                            if LINEAR_TARGETS[t][0] is site and LINEAR_TARGETS[t][1] is not None)
            rows = linear.out_features // 3
            out[site] = (linear, [(third * rows, rows) for third in thirds]
                         or [(0, linear.out_features)])
        return out

    # -- parameters --------------------------------------------------------------------------
    def _added_prefixes(self) -> tuple[str, ...]:
        return ("peft_shared.", "peft_stage_out.") + tuple(
            name + "." for name, _ in self.model.named_modules()
            if name.endswith((".peft_sites", ".peft_branches")))

    def added_parameters(self) -> list[nn.Parameter]:
        """Everything methods attached: site modules, linear branches, shared state."""
        seen: dict[int, nn.Parameter] = {}
        for module in self._attached:
            for p in module.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def added_state_keys(self) -> set[str]:
        """State-dict keys (parameters and buffers) of everything methods attached."""
        prefixes = self._added_prefixes()
        return {k for k in self.model.state_dict() if k.startswith(prefixes)}

    def detach_all(self) -> None:
        """Remove everything methods attached (the backbone's own weights are untouched)."""
        for info in self.blocks:
            for site in info.module.peft_sites:
                info.module.peft_sites[site] = nn.ModuleList()
        for module in self.model.modules():
            if type(module) in BRANCHED.values():
                module.peft_branches = nn.ModuleList()
        self.model.peft_shared = nn.ModuleDict()
        self.model.peft_stage_out = nn.ModuleList([nn.ModuleList() for _ in self.stages])
        for stage, norm in self._replaced_norms.items():
            self.model.out_norms[stage] = norm
        self._replaced_norms = {}
        self._attached = []
        self.method = None

    def fold_branches(self) -> None:
        """Add every layer branch's ``delta_weight()`` (a tensor of the layer's weight shape),
        and its ``delta_bias()`` where it has one, into its frozen layer and remove the
        branches (LoRA-style merging)."""
        for module in self.model.modules():
            if type(module) in BRANCHED.values():
                with torch.no_grad():
                    for branch in module.peft_branches:
                        module.weight += branch.delta_weight().to(module.weight.dtype)
                        bias = getattr(branch, "delta_bias", lambda: None)()
                        if bias is not None:
                            module.bias += bias.to(module.bias.dtype)
                module.peft_branches = nn.ModuleList()

    def to_timm(self) -> nn.Module:
        """The plain timm model: site machinery removed. Everything attached must be gone."""
        if self.added_state_keys():
            raise ValueError(f"{self.name}: modules are still attached; merge them first")
        for module in self.model.modules():
            plain = getattr(type(module), "plain_class", None)
            if plain is not None:
                for attr in ("peft_sites", "peft_branches", "peft_num_prefix"):
                    module._modules.pop(attr, None)
                    module.__dict__.pop(attr, None)
                module.__class__ = plain
        del self.model.peft_shared, self.model.peft_stage_out
        return self.model

    def freeze_backbone(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # -- running -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features (B, C_i, H_i, W_i) for necks: each stage output through its
        output norm, or through the stage-output modules that replaced it."""
        return [self._stage_out(i, feat) for i, feat in enumerate(self._forward_stages(x))]

    def _stage_out(self, stage: int, feat: torch.Tensor) -> torch.Tensor:
        """A stage's output (B, C, H, W) through its output norm, or through the stage-output
        modules that replaced it."""
        out_norms = getattr(self.model, "out_norms", None)
        modules = list(self.model.peft_stage_out[stage])
        if out_norms is not None and stage not in self._replaced_norms:
            modules.insert(0, out_norms[stage])
        if not modules:
            return feat
        b, c, h, w = feat.shape
        tokens = feat.flatten(2).transpose(1, 2)
        for module in modules:
            tokens = module(tokens, (h, w))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def split_patches(x: torch.Tensor, hw: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split tokens into (prefix tokens, patch tokens): the patches are the last H*W."""
    n = hw[0] * hw[1]
    return x[:, : x.shape[1] - n], x[:, x.shape[1] - n:]


HOSTS: dict[str, type[BackboneHost]] = {}


def register_family(cls: type[BackboneHost]) -> type[BackboneHost]:
    """Class decorator: make a host class the one for ``cls.family`` (one file per family)."""
    if not (isinstance(cls, type) and issubclass(cls, BackboneHost)) or not cls.family:
        raise TypeError(f"register_family expects a BackboneHost subclass with a family, got {cls!r}")
    if cls.family in HOSTS and HOSTS[cls.family] is not cls:
        raise ValueError(f"family '{cls.family}' is already registered by {HOSTS[cls.family].__name__}")
    for role, sites in cls.roles.items():
        missing = [s.value for s in sites if s not in cls.sites]
        if missing:
            raise ValueError(f"{cls.__name__}: role {role.value} names sites it lacks: {missing}")
    HOSTS[cls.family] = cls
    return cls


def get_family(family: str) -> type[BackboneHost]:
    try:
        return HOSTS[family]
    except KeyError:
        raise KeyError(f"unknown backbone family '{family}'; known: {', '.join(HOSTS)}") from None
