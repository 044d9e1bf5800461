"""DINOv2 and DINOv3 vision transformers from timm as an mmdet backbone.

One class for both families, ``TimmDinov2`` (registered as ``TimmDinov3`` too, and as
``TimmDinoViT``, its name in configs written before). What differs
is handled by timm's own model classes and weight converters: DINOv2 is timm's
``VisionTransformer`` (patch 14, learned position embedding, resampled to patch 16 here),
DINOv3 timm's ``Eva`` (natively patch 16, rotary position embedding computed for any grid,
4 storage/register tokens, LayerScale named ``gamma_1``/``gamma_2``). Both take any H x W
(``dynamic_img_size``; ``dynamic_img_pad`` pads to a multiple of the patch, a no-op after
mmdet's data preprocessor pads to 16), and both expose ``forward_intermediates`` and
``prune_intermediate_layers``, which is all this module uses.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.model import BaseModule

from ..errors import ConfigError, UserError, first_line
from ..checkpoint import checkpoint_kind

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


class CompileConfigError(ConfigError, TypeError):
    """``compile`` is neither a bool nor a dict of torch.compile arguments."""


class WeightFileError(UserError, ValueError):
    """A backbone weight file that is missing, unreadable or does not match the model."""


def read_state_dict(path: str) -> dict:
    """Read a tensor state dict from ``path`` (``torch.load(weights_only=True)``, with the
    allow-list and the file classification of ``checkpoint.py``).

    Accepts a plain state dict or one nested under ``model``/``state_dict``/``teacher``
    (the original DINOv2 training checkpoints), and ``backbone.``/``module.`` prefixes.
    """
    if os.path.isdir(path):
        raise WeightFileError(f'backbone weight file {path} is a folder: name the file')
    if not os.path.isfile(path):
        raise WeightFileError(f'backbone weight file not found: {path}')
    if os.path.getsize(path) == 0:
        raise WeightFileError(f'backbone weight file {path} is empty (0 bytes)')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a checkpoint"
        raise WeightFileError(
            f'{path} is not a readable weight file ({type(e).__name__}: '
            f'{first_line(e, "")})') from None
    kind = checkpoint_kind(obj)  # the classification every checkpoint flag uses
    if kind == 'detectron2':
        raise WeightFileError(f'{path} is a detectron2/detrex checkpoint: its keys are '
                              "detectron2's; model.backbone.pretrained takes backbone weights "
                              "in timm's or Meta's layout")
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if kind in ('training', 'detector'):
        raise WeightFileError(f'{path} holds a whole detector, not backbone weights: '
                              f'fine-tune from it with --load-from {path} (and '
                              'model.backbone.pretrained=False)')
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightFileError(f'{path} holds no tensor state dict')
    for prefix in ('module.', 'backbone.'):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_weight_file(model: nn.Module, path: str) -> None:
    """Load a weight file in timm's layout or Meta's original one (DINOv2 or DINOv3).

    timm's own ``checkpoint_filter_fn`` converts the original layout and resamples the
    patch embedding (e.g. 14 -> 16) and position embedding to the model's; every key must
    then match in name and shape, else :class:`WeightFileError` names the first bad key.
    """
    state = read_state_dict(path)
    # the converter of the model's own family: vision_transformer's for DINOv2 (original
    # layout, patch resampling), eva's for DINOv3 (Meta's layout: storage_tokens, ls1.gamma)
    checkpoint_filter_fn = getattr(sys.modules[type(model).__module__],
                                   'checkpoint_filter_fn', None)
    if checkpoint_filter_fn is None:
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


def create_model(model_name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    """``timm.create_model`` with one-line errors: an unknown name (with close names)
    and a refused download (DINOv3's weights are gated) point at what to do."""
    if not timm.is_model(model_name):
        import difflib
        base = model_name.split('.')[0]
        close = difflib.get_close_matches(base, timm.list_models('*dino*'), n=3, cutoff=0.5)
        hint = f'; did you mean {" or ".join(close)}?' if close else ''
        raise WeightFileError(f'unknown timm model name {model_name!r}{hint} '
                              "(timm.list_models('*dinov2*'), timm.list_models('*dinov3*'))")
    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except Exception as e:  # noqa: BLE001 - a download refused or impossible
        if not pretrained:
            raise
        gated = 'dinov3' in model_name
        detail = first_line(e)
        raise WeightFileError(
            f'cannot download the pretrained weights of {model_name} ({type(e).__name__}: '
            f'{detail[:200]})'
            + ('. DINOv3 weights are gated behind Meta\'s license on the Hugging Face hub: '
               'accept it on the model\'s page and log in (huggingface-cli login or HF_TOKEN)'
               if gated else '')
            + '. Or download the weights and pass the file: --cfg-options '
            'model.backbone.pretrained=/path/to/weights.pth (timm\'s or Meta\'s layout)'
        ) from None


@MODELS.register_module()
@MODELS.register_module(name='TimmDinov3')
@MODELS.register_module(name='TimmDinoViT')  # the name configs used before
class TimmDinov2(BaseModule):
    """A timm DINOv2 or DINOv3 ViT returning NCHW feature maps of chosen blocks
    (registered as ``TimmDinov2``, ``TimmDinov3`` and ``TimmDinoViT``; module docstring).

    Args:
        model_name: timm model name, e.g. ``vit_base_patch14_dinov2.lvd142m`` or
            ``vit_base_patch16_dinov3.lvd1689m``.
        pretrained: ``True`` loads timm's weights (hub), a string loads a local file
            (timm's layout, or Meta's original DINOv2 / DINOv3 layout), ``False`` keeps
            random weights.
        patch_size: patch size of the created model; pretrained patch-14 (DINOv2)
            embeddings are resampled to it (16 by default, as ViTDet and the recipe;
            DINOv3 is natively 16).
        img_size: nominal image size for the position-embedding grid; any H x W works
            (dynamic size, padded to a multiple of ``patch_size``).
        out_indices: blocks whose tokens are returned (negative counts from the end).
        final_norm: apply the final LayerNorm to the returned maps.
        frozen: no gradients and eval mode kept in ``train()``.
        trainable_blocks: with ``frozen``, still train the last N blocks (and the norm).
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
            self.vit = create_model(model_name, bool(pretrained), kwargs)
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
            raise CompileConfigError(f'TimmDinov2: compile must be a bool or a dict of '
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
        if self.fully_frozen:  # no graph to keep: nothing below trains
            with torch.no_grad():
                return self._run(x)
        return self._run(x)

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.vit.forward_intermediates(
            x, indices=list(self.out_indices), norm=self.final_norm,
            output_fmt='NCHW', intermediates_only=True))

