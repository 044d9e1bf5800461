"""The original's checkpoints (detectron2/detrex layout) in this project's layout.

The original (dgcnz/edge on detrex and detectron2) saves ``{'model': state_dict, ...}``
from detrex's ``DINO`` with ``TimmBackbone`` inside detrex's ``SimpleFeaturePyramid``
(the published ``model_final.pth``, ViT-B, 12 epochs, 51.9 box AP). Every tensor of it has
one place in this project's ``FastDINO``; :func:`convert_state` renames each one, reorders
the class-dependent rows from the original's contiguous COCO index to this project's class
order (both checked against the COCO category ids), and fails with the list of tensors left
over on either side instead of skipping any.

Which original name goes where (original, detrex's ``DINO`` -> this project, mmdet's):

- ``backbone.net.timm_model.model.*`` (the timm ViT) -> ``backbone.vit.*``
- ``backbone.simfp_{3,4,5}.{j}[.norm].*`` (the pyramid) -> ``neck.0.stages.{0,1,2}.{k}.*``
- ``neck.convs.{i}.{conv,norm}.*`` (ChannelMapper) -> ``neck.1.convs.{i}.{conv,gn}.*``
- ``transformer.encoder.layers.{i}.attentions.0.*`` -> ``encoder.layers.{i}.self_attn.*``
- ``transformer.decoder.layers.{i}.attentions.{0,1}.*`` ->
  ``decoder.layers.{i}.{self,cross}_attn.*``
- ``transformer.*.layers.{i}.{ffns.0,norms.j}.*`` -> ``*.layers.{i}.{ffn,norms.j}.*``
- ``transformer.decoder.{ref_point_head,norm}.*`` -> ``decoder.{ref_point_head,norm}.*``
- ``transformer.{level_embeds,tgt_embed,enc_output,enc_output_norm}`` ->
  ``level_embed``, ``query_embedding``, ``memory_trans_fc``, ``memory_trans_norm``
- ``class_embed.{i}.*`` (rows: classes) -> ``bbox_head.cls_branches.{i}.*``
- ``bbox_embed.{i}.layers.{j}.*`` -> ``bbox_head.reg_branches.{i}.{2j}.*``
- ``label_enc.weight`` (rows: classes) -> ``dn_query_generator.label_embedding.weight``
- ``transformer.decoder.{class,bbox}_embed.*``: the same tensors as ``{class,bbox}_embed.*``
  (checked equal, dropped)
- ``pixel_mean``, ``pixel_std``: checked against the data preprocessor's ``mean``/``std``
"""
from __future__ import annotations

import hashlib
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .checkpoint import CheckpointError

# COCO's 80 object categories as detectron2 orders them (``builtin_meta.COCO_CATEGORIES``,
# the things by id): the original's class index i is the i-th of these.
COCO_CATEGORIES = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'), (5, 'airplane'),
    (6, 'bus'), (7, 'train'), (8, 'truck'), (9, 'boat'), (10, 'traffic light'),
    (11, 'fire hydrant'), (13, 'stop sign'), (14, 'parking meter'), (15, 'bench'),
    (16, 'bird'), (17, 'cat'), (18, 'dog'), (19, 'horse'), (20, 'sheep'), (21, 'cow'),
    (22, 'elephant'), (23, 'bear'), (24, 'zebra'), (25, 'giraffe'), (27, 'backpack'),
    (28, 'umbrella'), (31, 'handbag'), (32, 'tie'), (33, 'suitcase'), (34, 'frisbee'),
    (35, 'skis'), (36, 'snowboard'), (37, 'sports ball'), (38, 'kite'),
    (39, 'baseball bat'), (40, 'baseball glove'), (41, 'skateboard'), (42, 'surfboard'),
    (43, 'tennis racket'), (44, 'bottle'), (46, 'wine glass'), (47, 'cup'), (48, 'fork'),
    (49, 'knife'), (50, 'spoon'), (51, 'bowl'), (52, 'banana'), (53, 'apple'),
    (54, 'sandwich'), (55, 'orange'), (56, 'broccoli'), (57, 'carrot'), (58, 'hot dog'),
    (59, 'pizza'), (60, 'donut'), (61, 'cake'), (62, 'chair'), (63, 'couch'),
    (64, 'potted plant'), (65, 'bed'), (67, 'dining table'), (70, 'toilet'), (72, 'tv'),
    (73, 'laptop'), (74, 'mouse'), (75, 'remote'), (76, 'keyboard'), (77, 'cell phone'),
    (78, 'microwave'), (79, 'oven'), (80, 'toaster'), (81, 'sink'), (82, 'refrigerator'),
    (84, 'book'), (85, 'clock'), (86, 'vase'), (87, 'scissors'), (88, 'teddy bear'),
    (89, 'hair drier'), (90, 'toothbrush'),
)

_CLASS_ROWS = ('class_embed.', 'label_enc.weight')  # original keys whose rows are classes
_ALIASES = ('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.')
_PIXEL_STATS = ('pixel_mean', 'pixel_std')


class ConversionError(CheckpointError):
    """An original checkpoint that does not map onto this project's model."""


def class_permutation(classes: Sequence[str]) -> List[int]:
    """For each of this project's classes (in its label order), the original's index.

    The original's index i is the i-th COCO category by id (detectron2's contiguous ids);
    this project's label j is ``classes[j]``, found by its COCO name. Raises
    :class:`ConversionError` for a name that is not one of COCO's 80.
    """
    index = {name: i for i, (_, name) in enumerate(COCO_CATEGORIES)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise ConversionError(f'the original was trained on COCO\'s 80 categories; these '
                              f'classes are not among them: {", ".join(map(repr, unknown[:5]))}')
    perm = [index[c] for c in classes]
    if len(set(perm)) != len(perm):
        raise ConversionError('the class list names a COCO category twice')
    return perm


def _pyramid_plan(keys: Sequence[str]) -> Dict[str, str]:
    """Original pyramid keys -> this project's, read from the keys themselves.

    detrex's stage ``simfp_{log2 stride}`` is ``[resampling..., Conv(1x1, norm), Conv(3x3,
    norm)]``; this project's ``stages.{i}`` is ``[resampling, conv, LN, conv, LN]`` with
    the resampling one module (a Sequential for scale 4). Stages are in stride order in
    both (the config's scale factors are in decreasing order).
    """
    pat = re.compile(r'^backbone\.simfp_(\d+)\.(\d+)\.(?:norm\.)?(weight|bias)$')
    stages: Dict[int, Dict[int, bool]] = {}
    for k in keys:
        m = pat.match(k)
        if m:
            entry = stages.setdefault(int(m.group(1)), {})
            entry[int(m.group(2))] = entry.get(int(m.group(2)), False) or '.norm.' in k
    plan = {}
    for i, stage in enumerate(sorted(stages)):
        normed = sorted(j for j, has_norm in stages[stage].items() if has_norm)
        if len(normed) != 2:
            continue  # left over: reported by the caller
        first = normed[0]  # the 1x1 conv; everything before it resamples
        src = f'backbone.simfp_{stage}.'
        dst = f'neck.0.stages.{i}.'
        for name in ('weight', 'bias'):
            plan[f'{src}{first}.{name}'] = f'{dst}1.{name}'
            plan[f'{src}{first}.norm.{name}'] = f'{dst}2.{name}'
            plan[f'{src}{first + 1}.{name}'] = f'{dst}3.{name}'
            plan[f'{src}{first + 1}.norm.{name}'] = f'{dst}4.{name}'
            if first == 1:  # scale 2: one transposed conv
                plan[f'{src}0.{name}'] = f'{dst}0.{name}'
            elif first == 4:  # scale 4: transposed conv, LN, GELU, transposed conv
                for j in (0, 1, 3):
                    plan[f'{src}{j}.{name}'] = f'{dst}0.{j}.{name}'
    return plan


_RULES: Tuple[Tuple[str, str], ...] = (
    (r'^backbone\.net\.timm_model\.model\.(.+)$', r'backbone.vit.\1'),
    (r'^neck\.convs\.(\d+)\.conv\.(.+)$', r'neck.1.convs.\1.conv.\2'),
    (r'^neck\.convs\.(\d+)\.norm\.(.+)$', r'neck.1.convs.\1.gn.\2'),
    (r'^neck\.extra_convs\.(\d+)\.conv\.(.+)$', r'neck.1.extra_convs.\1.conv.\2'),
    (r'^neck\.extra_convs\.(\d+)\.norm\.(.+)$', r'neck.1.extra_convs.\1.gn.\2'),
    (r'^transformer\.encoder\.layers\.(\d+)\.attentions\.0\.(.+)$',
     r'encoder.layers.\1.self_attn.\2'),
    (r'^transformer\.decoder\.layers\.(\d+)\.attentions\.0\.(.+)$',
     r'decoder.layers.\1.self_attn.\2'),
    (r'^transformer\.decoder\.layers\.(\d+)\.attentions\.1\.(.+)$',
     r'decoder.layers.\1.cross_attn.\2'),
    (r'^transformer\.(en|de)coder\.layers\.(\d+)\.ffns\.0\.(.+)$', r'\1coder.layers.\2.ffn.\3'),
    (r'^transformer\.(en|de)coder\.layers\.(\d+)\.norms\.(\d+)\.(.+)$',
     r'\1coder.layers.\2.norms.\3.\4'),
    (r'^transformer\.decoder\.ref_point_head\.(.+)$', r'decoder.ref_point_head.\1'),
    (r'^transformer\.decoder\.norm\.(.+)$', r'decoder.norm.\1'),
    (r'^transformer\.encoder\.post_norm_layer\.(.+)$', r'encoder.post_norm.\1'),
    (r'^transformer\.level_embeds$', r'level_embed'),
    (r'^transformer\.tgt_embed\.(.+)$', r'query_embedding.\1'),
    (r'^transformer\.enc_output\.(.+)$', r'memory_trans_fc.\1'),
    (r'^transformer\.enc_output_norm\.(.+)$', r'memory_trans_norm.\1'),
    (r'^class_embed\.(\d+)\.(.+)$', r'bbox_head.cls_branches.\1.\2'),
    (r'^label_enc\.weight$', r'dn_query_generator.label_embedding.weight'),
)


def _rename(key: str) -> Optional[str]:
    m = re.match(r'^bbox_embed\.(\d+)\.layers\.(\d+)\.(.+)$', key)
    if m:
        return f'bbox_head.reg_branches.{m.group(1)}.{2 * int(m.group(2))}.{m.group(3)}'
    for pattern, repl in _RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    """Keys for an error line: those under numbered layers grouped by layer range
    (``decoder.layers.2-5.* (64 tensors)``), the rest as they are."""
    groups: Dict[str, List[int]] = {}
    members: Dict[str, List[str]] = {}
    for key in keys:
        m = re.match(r'^(.*?)\.(\d+)\.', key)
        head = m.group(1) if m else key
        groups.setdefault(head, [])
        members.setdefault(head, []).append(key)
        if m:
            groups[head].append(int(m.group(2)))
    parts = []
    for head, numbers in groups.items():
        numbers = sorted(set(numbers))
        if len(members[head]) == 1:
            parts.append(members[head][0])
            continue
        span = (str(numbers[0]) if len(numbers) == 1 else
                f'{numbers[0]}-{numbers[-1]}' if numbers[-1] - numbers[0] + 1 == len(numbers)
                else ','.join(map(str, numbers)))
        parts.append(f'{head}.{span}.* ({len(members[head])} tensors)')
    more = f' (and {len(parts) - limit} more)' if len(parts) > limit else ''
    return ', '.join(parts[:limit]) + more


def convert_state(state: Dict[str, torch.Tensor],
                  target: Optional[Dict[str, torch.Tensor]] = None,
                  classes: Optional[Sequence[str]] = None,
                  mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None) -> Tuple[dict, dict]:
    """Map an original state dict onto this project's model.

    Args:
        state: the original's state dict (``original_state_of`` of the checkpoint).
        target: this project's model state dict (names and shapes), for the check that
            every tensor on both sides is accounted for; None skips that check.
        classes: this project's class names in label order (reorders the class rows;
            default COCO's 80 in id order, the identity).
        mean, std: the data preprocessor's normalisation (RGB, 0-255), checked against
            the original's ``pixel_mean`` / ``pixel_std``.

    Returns:
        (state dict in this project's layout, info: classes, counts).

    Raises:
        ConversionError: a tensor of either side left over, a shape that differs, the
        aliases of the head that are not the head's tensors, another normalisation.
    """
    plan = _pyramid_plan(list(state))
    out: Dict[str, torch.Tensor] = {}
    unmapped, consumed = [], []
    for key, value in state.items():
        if key.startswith(_ALIASES):
            own = key[len('transformer.decoder.'):]
            if own not in state or not torch.equal(state[own], value):
                raise ConversionError(f'{key} is not the same tensor as {own}: the original '
                                      'shares the head between the detector and its decoder')
            consumed.append(key)
            continue
        if key in _PIXEL_STATS:
            expected = mean if key == 'pixel_mean' else std
            if expected is not None and not torch.allclose(
                    value.flatten().float(), torch.tensor(expected, dtype=torch.float32),
                    atol=1e-3):
                raise ConversionError(f'{key} of the checkpoint is {value.flatten().tolist()}, '
                                      f'the config normalises with {list(expected)}')
            consumed.append(key)
            continue
        new = plan.get(key) or _rename(key)
        if new is None:
            unmapped.append(key)
            continue
        out[new] = value
    if unmapped:
        raise ConversionError(f'{len(unmapped)} tensors of the original checkpoint have no '
                              f'place in this project\'s model: {_listing(unmapped)}')
    num_classes = out['dn_query_generator.label_embedding.weight'].shape[0]
    names = list(classes) if classes is not None else [n for _, n in COCO_CATEGORIES]
    if num_classes == len(COCO_CATEGORIES):
        perm = class_permutation(names)
        if len(perm) != num_classes:
            raise ConversionError(f'the checkpoint has {num_classes} classes, the class list '
                                  f'{len(perm)}')
        for key, value in state.items():
            if key.startswith(_CLASS_ROWS) and not key.startswith(_ALIASES):
                new = plan.get(key) or _rename(key)
                out[new] = value[perm] if value.dim() >= 1 and \
                    value.shape[0] == num_classes else value
    elif classes is not None and len(names) != num_classes:
        raise ConversionError(f'the checkpoint has {num_classes} classes, the class list '
                              f'{len(names)}')
    if target is not None:
        missing = [k for k in target if k not in out]
        extra = [k for k in out if k not in target]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f'{len(missing)} tensors of this model are not in the '
                             f'checkpoint: {_listing(missing)}')
            if extra:
                parts.append(f'{len(extra)} converted tensors have no place in this model: '
                             f'{_listing(extra)}')
            raise ConversionError('; '.join(parts))
        shapes = [k for k in out if tuple(out[k].shape) != tuple(target[k].shape)]
        if shapes:
            k = shapes[0]
            more = f' (and {len(shapes) - 1} more)' if len(shapes) > 1 else ''
            raise ConversionError(f'{k} has shape {tuple(out[k].shape)} in the checkpoint, '
                                  f'{tuple(target[k].shape)} in this model{more}: is the '
                                  'config the one of the checkpoint\'s backbone (ViT-S: '
                                  'configs/dino_dinov2_s_12ep.py)?')
        out = {k: out[k] for k in target}  # the model's order
    info = dict(num_tensors=len(state), converted=len(out), aliases_and_stats=len(consumed),
                classes=names if num_classes == len(names) else None, num_classes=num_classes)
    return out, info


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def converted_checkpoint(state: dict, info: dict, source: str) -> dict:
    """The object ``tools/convert_original.py`` saves: this project's checkpoint layout
    (``state_dict`` + ``meta.dataset_meta``), marked as converted (not resumable)."""
    meta = dict(converted_from=dict(path=source.split('/')[-1], sha256=sha256(source),
                                    layout='detectron2/detrex (dgcnz/edge DINO)',
                                    tensors=info['num_tensors']))
    if info.get('classes'):
        meta['dataset_meta'] = dict(classes=tuple(info['classes']))
    return dict(meta=meta, state_dict=state)


def config_classes(cfg) -> Optional[Tuple[str, ...]]:
    """The class names a config trains (its dataset's ``metainfo``, else the dataset
    class's ``METAINFO``), or None."""
    from mmdet.registry import DATASETS
    loader = cfg.get('train_dataloader', None) or cfg.get('test_dataloader', None) or {}
    dataset = loader.get('dataset', {}) if loader else {}
    metainfo = dataset.get('metainfo', None) or {}
    if metainfo.get('classes'):
        return tuple(metainfo['classes'])
    cls = DATASETS.get(dataset.get('type', '')) if dataset.get('type') else None
    classes = getattr(cls, 'METAINFO', {}).get('classes') if cls else None
    return tuple(classes) if classes else None


def convert_for_model(state: dict, model, cfg) -> Tuple[dict, dict]:
    """:func:`convert_state` onto ``model`` (names and shapes checked) with the classes and
    normalisation of ``cfg``: the class rows follow the config's classes when they are
    COCO's 80 (in any order), else COCO's own order."""
    pre = cfg.model.get('data_preprocessor', {}) or {}
    return convert_state(state, model.state_dict(), classes=coco_order(config_classes(cfg)),
                         mean=pre.get('mean'), std=pre.get('std'))


def coco_order(classes: Optional[Sequence[str]]) -> Optional[Sequence[str]]:
    """``classes`` when they are COCO's 80 names (in any order: the class rows follow
    them), else None (the rows keep the original's COCO order)."""
    coco = {n for _, n in COCO_CATEGORIES}
    if classes is None or len(classes) != len(coco) or set(classes) != coco:
        return None
    return classes
