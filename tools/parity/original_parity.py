"""This project's model run on the inputs the original's own code recorded, stage by stage.

``tools/parity/original_outputs.py`` (in the original's environment) writes the original's
weights (``original.pth``) and what its model computed (``records.pth``): per image the
preprocessed input, the normalized batch, the ViT map, the pyramid and neck features, the
encoder memory, the encoder's top-K proposals, each decoder layer's logits and boxes and
the final detections; for one training batch the denoising queries, the Hungarian
assignments and the loss dict. Here the weights are converted
(``original_checkpoint.py``), the same inputs go through this project's model with
forward hooks at the same places, and :func:`compare` puts the numbers side by side with
the tolerances of each stage. ``tests/parity/`` runs it on a committed fixture; the tool
``tools/parity/compare_original.py`` on recordings made at full size.
"""
from __future__ import annotations

import contextlib
import copy
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# The presets of tools/parity/original_outputs.py in this project's config terms.
PRESET_CONFIGS = {'b': 'configs/dino_dinov2_b_12ep.py', 's': 'configs/dino_dinov2_s_12ep.py',
                  'tiny': 'configs/dino_dinov2_s_12ep.py'}

# Tolerances (float32, CPU): features and memory relative to the tensor's largest value,
# boxes in pixels, scores and probabilities absolute, loss terms relative.
TOLERANCES = dict(features=1e-4, boxes_px=1e-3, scores=1e-5, logits=1e-4, losses=1e-4)

# the recorded inputs; every other recorded key is a stage that must be compared
INPUT_KEYS = ('image', 'height', 'width')
TRAIN_INPUT_KEYS = ('seed', 'boxes', 'labels', 'dn_meta')


# The 'tiny' preset (the committed fixture) as --cfg-options of its config.
TINY_CFG_OPTIONS = (
    'model.backbone.model_kwargs.depth=2', 'model.backbone.model_kwargs.embed_dim=192',
    'model.backbone.model_kwargs.num_heads=3', 'model.backbone.img_size=224',
    'model.neck.0.in_channels=192', 'model.neck.0.out_channels=64',
    'model.neck.1.in_channels=[64,64,64,64]', 'model.encoder.num_layers=2',
    'model.decoder.num_layers=2', 'model.encoder.layer_cfg.ffn_cfg.feedforward_channels=256',
    'model.decoder.layer_cfg.ffn_cfg.feedforward_channels=256', 'model.num_queries=100',
)


def cfg_options(options: Sequence[str]) -> dict:
    """``--cfg-options`` strings as mmengine's ``DictAction`` parses them."""
    import argparse

    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options if options else {}


def preset_config(preset: str, test_size: Optional[Sequence[int]] = None):
    """The config of ``preset`` (the original's preset, in this project's terms), with the
    backbone's pretrained weights off and the test resize at ``test_size`` (short, long)."""
    from projects.dino_dinov2.cli.config_setup import load_config, skip_backbone_download
    options = cfg_options(TINY_CFG_OPTIONS if preset == 'tiny' else ())
    cfg = load_config(osp.join(ROOT, PRESET_CONFIGS[preset]), options)
    skip_backbone_download(cfg)
    if test_size is not None:
        short, long = test_size
        for t in cfg.test_dataloader.dataset.pipeline:
            if t.type == 'Resize':
                t.scale = (long, short)
    return cfg


def build_model(cfg, state: Dict[str, Tensor]):
    """This project's detector of ``cfg`` with ``state`` loaded (strict), in eval mode."""
    from projects.dino_dinov2.cli.config_setup import build_target_model
    model = build_target_model(copy.deepcopy(cfg))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state.items()}, strict=True)
    return model.eval()


def load_original(path: str, cfg, model=None):
    """(converted state dict, conversion info) of the original's checkpoint ``path``."""
    from projects.dino_dinov2.checkpoint import load_local_checkpoint, original_state_of
    from projects.dino_dinov2.cli.config_setup import build_target_model
    from projects.dino_dinov2.original_checkpoint import convert_for_model
    state = original_state_of(load_local_checkpoint(path, map_location='cpu'))
    if model is None:
        model = build_target_model(copy.deepcopy(cfg))
    return convert_for_model(state, model, cfg)


def test_pipeline(cfg):
    """The config's test pipeline for one image file (without annotations)."""
    from mmcv.transforms import Compose
    steps = [t for t in copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
             if t['type'] != 'LoadAnnotations']
    return Compose(steps)


def preprocess(cfg, path: str) -> Tensor:
    """``path`` through the config's test pipeline: the (3, H, W) uint8 RGB tensor the
    model's data preprocessor receives (flipped from the pipeline's BGR)."""
    import projects.dino_dinov2  # noqa: F401  (registers the transforms)
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    data = test_pipeline(cfg)(dict(img_path=path, img_id=0))
    return data['inputs'].flip(0).contiguous()


def _sample(image_rgb: Tensor, height: int, width: int, boxes=None, labels=None):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    h, w = image_rgb.shape[1:]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(height, width),
                                         scale_factor=(w / width, h / height), img_id=0))
    if boxes is not None:
        sample.gt_instances = InstanceData(bboxes=boxes.float(), labels=labels.long())
    return sample


class _Hooks:
    """Forward hooks on this project's model at the places the original was recorded."""

    def __init__(self, model):
        self.data: dict = {}
        self.targets: List[Tuple[Tensor, Tensor]] = []
        self.handles = []
        layers = model.decoder.num_layers
        self._hook(model.backbone, 'batch', lambda i, o: i[0])
        self._hook(model.backbone, 'vit', lambda i, o: o[-1])
        self._hook(model.neck[0], 'pyramid', lambda i, o: list(o))
        self._hook(model.neck[1], 'neck', lambda i, o: list(o))
        self._hook(model.encoder, 'memory', lambda i, o: o)
        self._hook(model.bbox_head.cls_branches[layers], 'enc_all_logits', lambda i, o: o)
        self._hook(model.bbox_head, 'head', lambda i, o: o)
        self.handles.append(model.decoder.register_forward_hook(
            lambda m, a, kw, o: self.data.__setitem__(
                'dec_reference', kw['reference_points'].detach().clone()),
            with_kwargs=True))
        gen = model.dn_query_generator
        real_collate = gen.collate_dn_queries

        def collate(*args, **kwargs):
            out = real_collate(*args, **kwargs)
            self.data['dn_bbox_query'] = out[1].detach().clone()
            return out
        gen.collate_dn_queries = collate
        real_mask = gen.generate_dn_mask

        def dn_mask(*args, **kwargs):
            out = real_mask(*args, **kwargs)
            self.data['dn_attn_mask'] = out.detach().clone()
            return out
        gen.generate_dn_mask = dn_mask
        self._hook(gen.label_embedding, 'dn_labels', lambda i, o: i[0])
        real_pre_decoder = model.pre_decoder

        def pre_decoder(*args, **kwargs):  # the encoder's top-K proposals in training
            dec_in, head_in = real_pre_decoder(*args, **kwargs)
            if 'enc_outputs_class' in head_in:
                self.data['train_enc_logits'] = head_in['enc_outputs_class'].detach().clone()
                self.data['train_enc_boxes'] = head_in['enc_outputs_coord'].detach().clone()
            return dec_in, head_in
        model.pre_decoder = pre_decoder
        # the assignments the head's losses are built from, per set (decoder layers, then
        # the encoder proposals) and image: recorded on their way out of the assigner
        assigner = model.bbox_head.assigner
        real_assign = assigner.assign_batch

        def assign_batch(preds, *args, **kwargs):
            out = real_assign(preds, *args, **kwargs)
            for s in range(len(preds[0]) if preds else 0):
                for image in out:
                    self.targets.append((torch.from_numpy(image[s][0]),
                                         torch.from_numpy(image[s][1])))
            return out
        assigner.assign_batch = assign_batch

    def _hook(self, module, key, pick):
        def hook(mod, inputs, output):
            self.data[key] = _detach(pick(inputs, output))
        self.handles.append(module.register_forward_hook(hook))

    def reset(self):
        self.data = {}
        self.targets = []


def _detach(x):
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return [_detach(v) for v in x]
    return x


def run_eval(model, hooks: _Hooks, image_rgb: Tensor, height: int, width: int) -> dict:
    """This project's model on one preprocessed image: the recorded stages."""
    hooks.reset()
    data = dict(inputs=[image_rgb.flip(0)], data_samples=[_sample(image_rgb, height, width)])
    with torch.no_grad():
        data = model.data_preprocessor(data, False)
        result = model.predict(data['inputs'], data['data_samples'], rescale=True)[0]
    d = hooks.data
    cls_scores, bbox_preds = d['head']
    k = model.num_queries
    all_logits = d['enc_all_logits']
    topk = torch.topk(all_logits.max(-1)[0], k=k, dim=1)[1]
    enc_logits = torch.gather(all_logits, 1,
                              topk.unsqueeze(-1).expand(-1, -1, all_logits.shape[-1]))
    pred = result.pred_instances
    return dict(batch=d['batch'], vit=d['vit'], pyramid=d['pyramid'], neck=d['neck'],
                memory=d['memory'], enc_logits=enc_logits, enc_boxes=d['dec_reference'],
                dec_logits=cls_scores, dec_boxes=bbox_preds, det_boxes=pred.bboxes,
                det_scores=pred.scores, det_labels=pred.labels)


# the original's loss names -> this project's
def loss_name(name: str) -> str:
    base = {'loss_class': 'loss_cls', 'loss_bbox': 'loss_bbox', 'loss_giou': 'loss_iou'}
    for orig, ours in base.items():
        if name == orig:
            return ours
        rest = name[len(orig):] if name.startswith(orig + '_') else None
        if rest is None:
            continue
        if rest == '_enc':
            return f'enc_{ours}'
        if rest == '_dn':
            return f'dn_{ours}'
        if rest.startswith('_dn_'):
            return f'd{rest[4:]}.dn_{ours}'
        return f'd{rest[1:]}.{ours}'
    raise KeyError(name)


def run_train(model, hooks: _Hooks, images: Sequence[Tensor], sizes, boxes, labels,
              seed: int, label_map: Optional[Sequence[int]] = None) -> dict:
    """One training batch: the loss dict, the denoising queries drawn after
    ``torch.manual_seed(seed)``, and the assignments of each matching in the original's
    call order (last layer, the other layers, the encoder proposals)."""
    hooks.reset()
    samples = []
    for img, (h, w), b, lab in zip(images, sizes, boxes, labels):
        lab = lab if label_map is None else torch.tensor([label_map[int(v)] for v in lab])
        samples.append(_sample(img, h, w, b, lab))
    data = dict(inputs=[img.flip(0) for img in images], data_samples=samples)
    model.train()
    try:
        data = model.data_preprocessor(data, True)
        torch.manual_seed(seed)
        losses = model.loss(data['inputs'], data['data_samples'])
    finally:
        model.eval()
    n = len(images)
    calls = [hooks.targets[i:i + n] for i in range(0, len(hooks.targets), n)]
    layers = model.decoder.num_layers
    if len(calls) == layers + 1:  # ours: layers 0..L-1, encoder; the original: L-1, 0.., enc
        calls = [calls[layers - 1]] + calls[:layers - 1] + [calls[layers]]
    return dict(losses={k: v.detach() for k, v in losses.items()},
                enc_logits=hooks.data.get('train_enc_logits'),
                enc_boxes=hooks.data.get('train_enc_boxes'), dn_labels=hooks.data.get('dn_labels'),
                dn_bbox_query=hooks.data.get('dn_bbox_query'),
                dn_attn_mask=hooks.data.get('dn_attn_mask'), matches=calls)


# -- comparison ----------------------------------------------------------------------------

def _rel(a: Tensor, b: Tensor) -> float:
    """Largest difference relative to the reference tensor's largest magnitude."""
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        raise ValueError(f'shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}')
    scale = b.abs().max().clamp(min=1e-12)
    return float((a - b).abs().max() / scale) if a.numel() else 0.0


def _abs(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f'shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}')
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def tied_proposals(ours: Tensor, theirs: Tensor, tol: float) -> Tuple[List[int], float]:
    """Query slots whose encoder proposal differs, when the two models ranked proposals
    of (nearly) equal score in another order: (slots, their score spread in logits).

    DINO pairs query slot i with the i-th best proposal and the i-th learned query
    embedding, so two proposals whose scores differ by float32 noise (5e-7 seen at full
    size among ~18k tokens) swap slots and those queries see other inputs. Everything
    else must match; returns ([], 0) when nothing differs, and raises ValueError when the
    differing slots are not a reordering of the same proposals.
    """
    a, b = ours[0].double(), theirs[0].double()
    scale = float(b.abs().max().clamp(min=1e-12))
    rows = ((a - b).abs().max(-1)[0] > tol * scale).nonzero().flatten().tolist()
    if not rows:
        return [], 0.0
    for i in rows:
        if not any(float((a[i] - b[j]).abs().max()) <= tol * scale for j in rows):
            raise ValueError(f'proposal {i} is not among the original\'s')
    best = a[rows].max(-1)[0]
    return rows, float(best.max() - best.min())


def _query_of(dets_scores: Tensor, dets_labels: Tensor, last_logits: Tensor) -> List[int]:
    """For each detection, the query it came from (its score is sigmoid of one logit)."""
    probs = last_logits[0].double().sigmoid()  # (queries, classes)
    return [int((probs[:, int(c)] - float(s)).abs().argmin())
            for s, c in zip(dets_scores, dets_labels)]


def compare_eval(ours: dict, rec: dict, perm: Optional[Sequence[int]] = None,
                 top: int = 100) -> List[dict]:
    """Rows ``{stage, measure, value, tol, ok}`` for one image; every recorded stage of
    ``rec`` gets at least one row (KeyError for a stage this function does not know).

    Query slots whose proposals a near-tie reordered (:func:`tied_proposals`) are left
    out of the decoder and detection comparisons, and the rows say how many.
    """
    rows = []
    tol = TOLERANCES
    h, w = rec['image'].shape[1:]
    whwh = torch.tensor([w, h, w, h], dtype=torch.float64)
    perm = list(range(rec['dec_logits'].shape[-1])) if perm is None else list(perm)
    rec = dict(rec, dec_logits=rec['dec_logits'][..., perm], enc_logits=rec['enc_logits'][
        ..., perm], det_labels=torch.tensor([perm.index(int(v)) for v in rec['det_labels']]))
    try:
        tied, spread = tied_proposals(ours['enc_logits'], rec['enc_logits'], tol['logits'])
    except ValueError:
        tied, spread = None, float('inf')
    keep = None
    if tied:
        keep = torch.tensor([i for i in range(rec['enc_logits'].shape[1]) if i not in tied])
    note = f', {len(tied)} tied slots left out' if tied else ''

    def row(stage, measure, value, limit, ok=None):
        rows.append(dict(stage=stage, measure=measure, value=value, tol=limit,
                         ok=(value <= limit) if ok is None else ok))

    def kept(t: Tensor, dim: int) -> Tensor:
        return t if keep is None else t.index_select(dim, keep)

    def dets(d: dict) -> List[tuple]:
        """The top detections as (query, class, score, box), untied queries only."""
        q = _query_of(d['det_scores'], d['det_labels'], d['dec_logits'][-1])
        out = [(qi, int(c), float(sc), b) for qi, c, sc, b in zip(
            q, d['det_labels'].tolist(), d['det_scores'], d['det_boxes'])
            if not tied or qi not in tied]
        return out[:top]

    for key in rec:
        if key in INPUT_KEYS:
            continue
        shapes = [(tuple(a.shape), tuple(b.shape)) for a, b in zip(
            ours[key] if isinstance(ours[key], list) else [ours[key]],
            rec[key] if isinstance(rec[key], list) else [rec[key]]) if a.shape != b.shape]
        if shapes and key not in ('det_boxes', 'det_scores', 'det_labels'):
            row(key, f'shapes differ: {shapes[0][0]} here, {shapes[0][1]} there',
                float('inf'), 0.0, ok=False)
            continue
        if key in ('batch', 'vit', 'memory'):
            row(key, 'max rel diff', _rel(ours[key], rec[key]), tol['features'])
        elif key in ('pyramid', 'neck'):
            row(key, f'max rel diff ({len(rec[key])} levels)',
                max(_rel(a, b) for a, b in zip(ours[key], rec[key])), tol['features'],
                ok=len(ours[key]) == len(rec[key]) and all(
                    _rel(a, b) <= tol['features'] for a, b in zip(ours[key], rec[key])))
        elif key == 'enc_logits':
            if tied is None:
                row(key, 'max rel diff (other proposals chosen)', _rel(
                    ours[key], rec[key]), tol['logits'])
            else:
                spread_note = f' (their scores within {spread:.1e})' if tied else ''
                row(key, f'max rel diff{note}{spread_note}',
                    _rel(kept(ours[key], 1), kept(rec[key], 1)), tol['logits'],
                    ok=_rel(kept(ours[key], 1), kept(rec[key], 1)) <= tol['logits']
                    and spread <= tol['logits'] * float(rec[key].abs().max()))
        elif key == 'dec_logits':
            row(key, f'max rel diff{note}', _rel(kept(ours[key], 2), kept(rec[key], 2)),
                tol['logits'])
        elif key == 'enc_boxes':
            row(key, f'max box diff (px){note}', _abs(kept(ours[key], 1).double() * whwh,
                                                      kept(rec[key], 1).double() * whwh),
                tol['boxes_px'])
        elif key == 'dec_boxes':
            row(key, f'max box diff (px){note}', _abs(kept(ours[key], 2).double() * whwh,
                                                      kept(rec[key], 2).double() * whwh),
                tol['boxes_px'])
        elif key in ('det_boxes', 'det_scores', 'det_labels'):
            if tied is None:
                row(key, 'not compared: other proposals chosen', float('inf'), 0.0, ok=False)
                continue
            mine, theirs = dets(ours), dets(rec)
            what = f'top {len(theirs)}{" of the untied" if tied else ""}'
            by_key = {(qi, c): (sc, b) for qi, c, sc, b in mine}
            both = [(by_key[(qi, c)], (sc, b)) for qi, c, sc, b in theirs if (qi, c) in by_key]
            if key == 'det_boxes':
                diff = max((_abs(a[1], b[1]) for a, b in both), default=0.0)
                row(key, f'max box diff, {what} (px)', diff, tol['boxes_px'])
            elif key == 'det_scores':
                diff = max((abs(a[0] - b[0]) for a, b in both), default=0.0)
                row(key, f'max score diff, {what}', diff, tol['scores'])
            else:
                # the same (query, class) detections; where the order differs, the two
                # scores there are within the score tolerance (a near-tie)
                missing = len(theirs) - len(both)
                score_of = {(qi, c): sc for qi, c, sc, _ in theirs}
                swaps = [i for i, (m, t) in enumerate(zip(mine, theirs)) if m[:2] != t[:2]]
                gaps = [abs(t[2] - score_of.get(m[:2], float('inf')))
                        for m, t in ((mine[i], theirs[i]) for i in swaps)]
                ties = max(gaps, default=0.0)
                measure = f'(query, class) of the {what} not here'
                if swaps:
                    measure += f'; order differs at {len(swaps)} places, scores within ' \
                               f'{ties:.1e} there'
                row(key, measure, float(missing), 0.0,
                    ok=missing == 0 and ties <= 2 * tol['scores'])
        else:
            raise KeyError(f'recorded stage {key!r} has no comparison')
    return rows


def train_ties(ours: dict, rec: dict) -> List[List[int]]:
    """Per image of the training batch, the query slots a near-tie of proposal scores
    ordered differently (:func:`tied_proposals`)."""
    out = []
    for b in range(rec['enc_logits'].shape[0]):
        try:
            tied, _ = tied_proposals(ours['enc_logits'][b:b + 1], rec['enc_logits'][b:b + 1],
                                     TOLERANCES['logits'])
        except ValueError:
            tied = []
        out.append(tied)
    return out


def compare_train(ours: dict, rec: dict, sizes: Sequence[Tuple[int, int]]) -> List[dict]:
    """Rows for the training batch (images of ``sizes`` (h, w)): the encoder's proposals,
    denoising queries, assignments, each loss term."""
    rows = []
    for key in rec:
        if key in TRAIN_INPUT_KEYS:
            continue
        if key in ('enc_logits', 'enc_boxes'):
            tied = train_ties(ours, rec)
            note = f', {sum(map(len, tied))} tied slots left out' if any(tied) else ''
            keep = [torch.tensor([i for i in range(rec[key].shape[1]) if i not in t])
                    for t in tied]
            a = torch.cat([ours[key][b].index_select(0, k) for b, k in enumerate(keep)])
            t = torch.cat([rec[key][b].index_select(0, k) for b, k in enumerate(keep)])
            if key == 'enc_logits':
                value, limit = _rel(a, t), TOLERANCES['logits']
                measure = f'max rel diff{note}'
            else:
                whwh = [torch.tensor([w, h, w, h], dtype=torch.float64) for h, w in sizes]
                a = torch.cat([ours[key][b].index_select(0, k).double() * whwh[b]
                               for b, k in enumerate(keep)])
                t = torch.cat([rec[key][b].index_select(0, k).double() * whwh[b]
                               for b, k in enumerate(keep)])
                value, limit = _abs(a, t), TOLERANCES['boxes_px']
                measure = f'max box diff (px){note}'
            rows.append(dict(stage=f'{key} (training)', measure=measure, value=value,
                             tol=limit, ok=value <= limit))
        elif key == 'dn_labels':
            same = bool(torch.equal(ours['dn_labels'].cpu(), rec['dn_labels'].cpu()))
            rows.append(dict(stage='dn_labels', measure='noisy labels equal',
                             value=0.0 if same else 1.0, tol=0.0, ok=same))
        elif key == 'dn_attn_mask':
            same = bool(torch.equal(ours['dn_attn_mask'].cpu(), rec['dn_attn_mask'].cpu()))
            rows.append(dict(stage='dn_attn_mask', measure='attention masks equal',
                             value=0.0 if same else 1.0, tol=0.0, ok=same))
        elif key == 'dn_bbox_query':
            value = _abs(ours['dn_bbox_query'], rec['dn_bbox_query'])
            rows.append(dict(stage='dn_bbox_query', measure='max diff (inverse sigmoid)',
                             value=value, tol=1e-5, ok=value <= 1e-5))
        elif key == 'matches':
            total = bad = 0
            for ours_call, rec_call in zip(ours['matches'], rec['matches']):
                for (pos, gt), (src, tgt) in zip(ours_call, rec_call):
                    total += 1
                    a = sorted(zip(pos.tolist(), gt.tolist()))
                    b = sorted(zip(src.tolist(), tgt.tolist()))
                    bad += a != b
            ok = bad == 0 and len(ours['matches']) == len(rec['matches'])
            rows.append(dict(stage='matches', measure=f'assignments differing (of {total})',
                             value=float(bad), tol=0.0, ok=ok))
        elif key == 'losses':
            for name, value in rec['losses'].items():
                mine = ours['losses'].get(loss_name(name))
                if mine is None:
                    rows.append(dict(stage=f'loss {name}', measure='missing', value=float('inf'),
                                     tol=TOLERANCES['losses'], ok=False))
                    continue
                ref = float(value)
                diff = abs(float(mine) - ref) / max(abs(ref), 1e-12)
                rows.append(dict(stage=f'loss {name}', measure=f'rel diff ({ref:.6g})',
                                 value=diff, tol=TOLERANCES['losses'],
                                 ok=diff <= TOLERANCES['losses']))
            extra = set(ours['losses']) - {loss_name(k) for k in rec['losses']}
            rows.append(dict(stage='losses', measure=f'terms only here: {sorted(extra)}',
                             value=float(len(extra)), tol=0.0, ok=not extra))
        else:
            raise KeyError(f'recorded training stage {key!r} has no comparison')
    return rows


def _original_order(ours_boxes: Tensor, their_boxes: Tensor, tied: List[int]) -> List[int]:
    """For each query slot, the slot of this project's ranking that holds the proposal the
    original put there (only the tied slots move)."""
    order = list(range(ours_boxes.shape[1]))
    for i in tied:
        j = int((ours_boxes[0, tied] - their_boxes[0, i]).abs().max(-1)[0].argmin())
        order[i] = tied[j]
    return order


@contextlib.contextmanager
def _proposal_order(num_queries: int, orders: List[List[int]]):
    """Within the block, DINO's top-``num_queries`` proposal ranking (mmdet's
    ``pre_decoder`` calls ``torch.topk``) of image b is reordered by ``orders[b]``: the
    comparison tool resolves float32 near-ties the way the original did, to compare what
    follows. Never used outside this analysis."""
    real = torch.topk

    def topk(x, k, *args, **kwargs):
        values, indices = real(x, k, *args, **kwargs)
        if k == num_queries:
            index = torch.tensor(orders, device=indices.device)
            values, indices = values.gather(1, index), indices.gather(1, index)
        return values, indices
    torch.topk = topk
    try:
        yield
    finally:
        torch.topk = real


def run_records(records: dict, original_path: str, preset: Optional[str] = None,
                cfg=None) -> Tuple[List[dict], dict]:
    """Convert ``original_path``, run every recorded image and the training batch through
    this project's model; returns (rows, info)."""
    from projects.dino_dinov2.original_checkpoint import class_permutation, config_classes
    meta = records['meta']
    cfg = cfg or preset_config(preset or meta['preset'], meta.get('test_size'))
    state, info = load_original(original_path, cfg)
    model = build_model(cfg, state)
    classes = info['classes'] or config_classes(cfg)
    perm = class_permutation(classes) if classes and len(classes) == 80 else None
    hooks = _Hooks(model)
    rows = []
    for i, rec in enumerate(records['eval']):
        name = meta['images'][i] if i < len(meta.get('images', [])) else str(i)
        ours = run_eval(model, hooks, rec['image'], rec['height'], rec['width'])
        for r in compare_eval(ours, rec, perm):
            rows.append(dict(r, image=name))
        try:
            tied, _ = tied_proposals(ours['enc_logits'], rec['enc_logits'][..., perm or slice(
                None)], TOLERANCES['logits'])
        except ValueError:
            tied = []
        if tied:  # again, with the tied proposals in the original's slots
            for r in rows:
                if r['image'] == name:
                    r['tied'] = True  # decided by the rows below
            order = _original_order(ours['enc_boxes'], rec['enc_boxes'], tied)
            with _proposal_order(model.num_queries, [order]):
                aligned = run_eval(model, hooks, rec['image'], rec['height'], rec['width'])
            for r in compare_eval(aligned, rec, perm):
                rows.append(dict(r, image=name, stage=f'{r["stage"]}, ties as the original'))
    train = records.get('train')
    if train:
        evals = records['eval']
        inverse = None if perm is None else [perm.index(j) for j in range(len(perm))]
        args = (model, hooks, [e['image'] for e in evals],
                [(e['height'], e['width']) for e in evals], train['boxes'], train['labels'],
                train['seed'], inverse)
        sizes = [tuple(e['image'].shape[1:]) for e in evals]
        ours = run_train(*args)
        ties = train_ties(ours, train)
        for r in compare_train(ours, train, sizes):
            rows.append(dict(r, image='train batch', tied=any(ties)))
        if any(ties):  # again, with the tied proposals in the original's slots
            orders = [_original_order(ours['enc_boxes'][b:b + 1], train['enc_boxes'][b:b + 1],
                                      t) for b, t in enumerate(ties)]
            with _proposal_order(model.num_queries, orders):
                aligned = run_train(*args)
            for r in compare_train(aligned, train, sizes):
                rows.append(dict(r, image='train batch',
                                 stage=f'{r["stage"]}, ties as the original'))
    return rows, dict(info, model=model)


def format_rows(rows: List[dict]) -> str:
    lines = ['| input | stage | measure | value | tolerance | ok |',
             '| --- | --- | --- | ---: | ---: | --- |']
    for r in rows:
        lines.append(f'| {r["image"]} | {r["stage"]} | {r["measure"]} | {r["value"]:.3g} | '
                     f'{r["tol"]:.0e} | {"yes" if r["ok"] else "NO"} |')
    return '\n'.join(lines)
