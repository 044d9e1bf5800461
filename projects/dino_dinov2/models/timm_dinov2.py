"""DINOv2 vision transformers from timm as an mmdet backbone."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.model import BaseModule

# DINOv2 ViTs timm ships with pretrained weights (LVD-142M); any other timm ViT name also
# works (e.g. for the tiny from-scratch model of the synthetic config).
DINOV2_MODELS = (
    'vit_small_patch14_dinov2.lvd142m',
    'vit_base_patch14_dinov2.lvd142m',
    'vit_large_patch14_dinov2.lvd142m',
    'vit_giant_patch14_dinov2.lvd142m',
    'vit_small_patch14_reg4_dinov2.lvd142m',
    'vit_base_patch14_reg4_dinov2.lvd142m',
    'vit_large_patch14_reg4_dinov2.lvd142m',
    'vit_giant_patch14_reg4_dinov2.lvd142m',
)

# Keys under which common checkpoint formats nest the weights.
_NESTED_KEYS = ('model', 'state_dict', 'teacher', 'student', 'module')


class WeightFileError(ValueError):
    """A backbone weight file that is missing, unreadable or does not match the model."""


def read_state_dict(path: str) -> dict:
    """Read a tensor state dict from ``path`` (``torch.load(weights_only=True)``).

    Accepts a plain state dict or one nested under ``model``/``state_dict``/``teacher``
    (the original DINOv2 training checkpoints), and ``backbone.``/``module.`` prefixes.
    """
    if not os.path.isfile(path):
        raise WeightFileError(f'backbone weight file not found: {path}')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a checkpoint"
        raise WeightFileError(
            f'{path} is not a readable weight file ({type(e).__name__}: '
            f'{str(e).splitlines()[0] if str(e) else ""})') from None
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightFileError(f'{path} holds no tensor state dict')
    for prefix in ('module.', 'backbone.'):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_weight_file(model: nn.Module, path: str) -> None:
    """Load a timm- or original-DINOv2-layout weight file into a timm ViT.

    timm's own ``checkpoint_filter_fn`` converts the original layout and resamples the
    patch embedding (e.g. 14 -> 16) and position embedding to the model's; every key must
    then match in name and shape, else :class:`WeightFileError` names the first bad key.
    """
    state = read_state_dict(path)
    from timm.models.vision_transformer import checkpoint_filter_fn
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as e:  # noqa: BLE001
        raise WeightFileError(f'{path}: cannot convert weights for this model '
                              f'({type(e).__name__}: {e})') from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f'{len(mismatched)} with wrong shape, first {k!r}: file '
                         f'{tuple(state[k].shape)} vs model {tuple(own[k].shape)}')
        if missing:
            parts.append(f'{len(missing)} missing, first {missing[0]!r}')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected, first {unexpected[0]!r}')
        raise WeightFileError(f'{path} does not match the backbone: ' + '; '.join(parts))
    model.load_state_dict(state, strict=True)


@MODELS.register_module()
class TimmDinov2(BaseModule):
    """A timm (DINOv2) ViT returning NCHW feature maps of chosen blocks.

    Args:
        model_name: timm model name, e.g. ``vit_base_patch14_dinov2.lvd142m``.
        pretrained: ``True`` loads timm's weights (hub), a string loads a local file
            (timm or original DINOv2 key layout), ``False`` keeps random weights.
        patch_size: patch size of the created model; pretrained patch-14 embeddings are
            resampled to it (16 by default, as ViTDet and the recipe).
        img_size: nominal image size for the position-embedding grid; any H x W works
            (dynamic size, padded to a multiple of ``patch_size``).
        out_indices: blocks whose tokens are returned (negative counts from the end).
        final_norm: apply the final LayerNorm to the returned maps.
        frozen: no gradients and eval mode kept in ``train()``.
        trainable_blocks: with ``frozen``, still train the last N blocks (and the norm).
        frozen_no_grad: run a fully frozen backbone under ``torch.no_grad`` (no graph is
            kept; turn off only to reproduce the original's memory behaviour).
        fused_attn: attention through ``F.scaled_dot_product_attention`` (flash /
            memory-efficient kernels on a GPU); ``False`` runs timm's explicit
            ``softmax(q @ k^T) @ v``, as the original did. Same result within rounding.
        compile: ``torch.compile`` the backbone's forward on first use; ``True`` or a
            dict of ``torch.compile`` arguments (e.g. ``dict(dynamic=True)`` for the
            multi-scale training sizes). Off by default: compiling takes minutes.
        model_kwargs: further ``timm.create_model`` arguments (depth, embed_dim, ...).

    Under mixed precision the backbone runs inside the optimizer wrapper's autocast:
    its matrix products in bfloat16, LayerNorm and softmax in float32. Frozen weights
    stay float32 (autocast casts them per call, a few hundred MB of traffic per step),
    so switching AMP off needs no conversion.

    Shapes: input (B, 3, H, W); each output (B, C, ceil(H / p), ceil(W / p)).
    """

    def __init__(self,
                 model_name: str = 'vit_base_patch14_dinov2.lvd142m',
                 pretrained: Union[bool, str] = True,
                 patch_size: int = 16,
                 img_size: Optional[int] = None,
                 out_indices: Sequence[int] = (-1, ),
                 final_norm: bool = False,
                 frozen: bool = True,
                 trainable_blocks: int = 0,
                 frozen_no_grad: bool = True,
                 fused_attn: bool = True,
                 compile: Union[bool, dict] = False,
                 model_kwargs: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        kwargs = dict(num_classes=0, dynamic_img_size=True, dynamic_img_pad=True,
                      patch_size=patch_size)
        if img_size is not None:
            kwargs['img_size'] = img_size
        kwargs.update(model_kwargs or {})
        if isinstance(pretrained, str):
            self.vit = timm.create_model(model_name, pretrained=False, **kwargs)
            load_weight_file(self.vit, pretrained)
        else:
            self.vit = timm.create_model(model_name, pretrained=bool(pretrained), **kwargs)
        depth = len(self.vit.blocks)
        self.out_indices = tuple(sorted(i % depth for i in out_indices))
        self.final_norm = final_norm
        # Drop blocks after the last wanted one, the head, and the norm if unused: no
        # parameter then goes without a gradient (DDP) and no compute is wasted.
        self.vit.prune_intermediate_layers(
            list(self.out_indices), prune_norm=not final_norm, prune_head=True)
        self.embed_dim = self.vit.embed_dim
        self.patch_size = patch_size
        self.frozen = frozen
        self.trainable_blocks = trainable_blocks
        self.frozen_no_grad = frozen_no_grad
        self.fused_attn = fused_attn
        # timm decides per attention module at construction (env TIMM_FUSED_ATTN);
        # the config's choice overrides it for every block.
        for m in self.vit.modules():
            if hasattr(m, 'fused_attn'):
                m.fused_attn = fused_attn
        if compile is True:
            compile = {}
        elif compile is False or compile is None:
            compile = None
        elif not isinstance(compile, dict):
            raise TypeError(f'TimmDinov2: compile must be a bool or a dict of '
                            f'torch.compile arguments, got {compile!r}')
        self.compile_cfg = compile
        self._compiled_forward: Optional[Callable] = None
        if frozen:
            self._freeze()

    def _trainable_modules(self):
        if self.trainable_blocks <= 0:
            return []
        blocks = list(self.vit.blocks)[-self.trainable_blocks:]
        return blocks + ([self.vit.norm] if self.final_norm else [])

    def _freeze(self) -> None:
        for p in self.vit.parameters():
            p.requires_grad_(False)
        for m in self._trainable_modules():
            for p in m.parameters():
                p.requires_grad_(True)

    @property
    def fully_frozen(self) -> bool:
        return self.frozen and self.trainable_blocks <= 0

    def init_weights(self) -> None:
        # Weights come from timm (pretrained or its own init); mmengine's default
        # initialisation must not overwrite them.
        pass

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen and mode:
            self.vit.eval()
            for m in self._trainable_modules():
                m.train(True)
        return self

    def __getstate__(self):
        # A compiled function is bound to this instance: copies (EMA's deepcopy, pickling)
        # compile their own on first use.
        state = self.__dict__.copy()
        state['_compiled_forward'] = None
        return state

    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.compile_cfg is None:
            return self._forward(x)
        if self._compiled_forward is None:
            self._compiled_forward = torch.compile(self._forward, **self.compile_cfg)
        return self._compiled_forward(x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.fully_frozen and self.frozen_no_grad:
            with torch.no_grad():
                return self._run(x)
        return self._run(x)

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.vit.forward_intermediates(
            x, indices=list(self.out_indices), norm=self.final_norm,
            output_fmt='NCHW', intermediates_only=True))
