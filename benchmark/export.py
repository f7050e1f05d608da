"""A trained cell's method state in the release naming: what ``train`` writes next to its
result, and what ``merge`` and ``params --checkpoint`` read.

The state comes from the run's last checkpoint in its work dir (mmengine saves the whole
model there). It holds only what the method trained in the backbone: a PEFT method's modules
in its authors' naming and any backbone parameter it trains (small), full fine-tuning's whole backbone in the backbone release's
naming, nothing for linear probing (its head belongs to the task). Loading it back needs the
pretrained backbone it was trained on, as a release checkpoint does.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from catalog import Cell

BACKBONE_PREFIX = "backbone.model."  # the host's model inside an OpenMMLab task model


def adapter_path(result: str | os.PathLike) -> Path:
    """Where the method state of the result file ``RESULT.json`` goes: ``RESULT.adapter.pth``."""
    return Path(result).with_suffix(".adapter.pth")


def method_state(host) -> dict[str, torch.Tensor]:
    """The part of ``host``'s release-named state dict that its method trains."""
    from methods.checkpoints import export_official

    state, added = export_official(host), host.added_state_keys()
    own = {n: p for n, p in host.model.named_parameters() if n not in added}
    trained = {host.release_key(n): p.detach() for n, p in own.items() if p.requires_grad}
    if own and len(trained) == len(own):
        return state  # full fine-tuning: the method's state is the whole backbone
    names = host.method.official_keys(host) if host.method is not None else {}
    # the method's modules, and the backbone's own parameters it trains (GPS's biases) under
    # their release names (a fused qkv bias is the release's q, k and v biases)
    wanted = {names.get(k, k) for k in added} | set(host.to_release(trained))
    return {k: v for k, v in state.items() if k in wanted}


def export_cell(cell: Cell, work_dir: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write ``cell``'s trained method state (from its run in ``work_dir``) to ``out``
    atomically; return the number of tensors written."""
    from methods import build
    from methods.base import restore

    from .io import write_bytes_atomic
    from .runner import code_fingerprint

    run_dir = Path(work_dir) / f"{cell.config_hash()}-{code_fingerprint()}"
    pointer = run_dir / "last_checkpoint"
    if not pointer.is_file():
        raise FileNotFoundError(f"no checkpoint of this run in {run_dir} (zero training "
                                f"iterations save none): nothing to export")
    checkpoint = torch.load(pointer.read_text().strip(), map_location="cpu", weights_only=False)
    trained = {k[len(BACKBONE_PREFIX):]: v for k, v in checkpoint["state_dict"].items()
               if k.startswith(BACKBONE_PREFIX)}
    host = build(cell.backbone, cell.method, cell.task, **dict(cell.options))
    restore(host, trained)
    host.model.load_state_dict(trained)
    state = method_state(host)
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(out, buf.getvalue())
    return len(state)


def compare_state(host, source: str | os.PathLike) -> tuple[int, list[str]]:
    """(parameters in ``source``, what differs from the method state ``host`` would write):
    a file of another method, backbone or option set differs in names or shapes."""
    from methods.base import restore
    from methods.checkpoints import read_state_dict

    theirs = read_state_dict(source)
    restore(host, host.from_release(theirs))
    ours = method_state(host)
    problems = []
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    shaped = sorted(k for k in set(ours) & set(theirs)
                    if tuple(ours[k].shape) != tuple(theirs[k].shape))
    if shaped:
        k = shaped[0]
        problems.append(f"{len(shaped)} of another shape (e.g. {k}: {tuple(theirs[k].shape)}, "
                        f"expected {tuple(ours[k].shape)})")
    return sum(v.numel() for v in theirs.values()), problems


def on_backbone(state_file: str | os.PathLike,
                pretrained: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """A method state file over the backbone checkpoint it was trained on (None: the file
    alone, e.g. a release checkpoint that holds both), ready for ``load_official``."""
    from methods.checkpoints import read_state_dict

    state = read_state_dict(state_file)
    return {**read_state_dict(pretrained), **state} if pretrained else state
