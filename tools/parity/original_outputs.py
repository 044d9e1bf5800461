"""Run the original's own model (dgcnz/edge on detrex/detectron2) and record what it computes.

Runs in the original's environment (tools/parity/install_original.sh), never in this
project's: it imports detectron2, detrex and the original's ``projects.dino_dinov2``.

    python tools/parity/original_outputs.py --src SRC_DIR --preset s --out DIR \
        --images a.jpg b.jpg [--seed 0]

builds the original's model from its own LazyConfig
(``projects/dino_dinov2/configs/models/dino_dinov2.py``, pretrained weights off, seeded),
perturbs its trained (non-ViT) weights by a seeded amount so that its scores are distinct
(freshly initialised, DINO's class scores are nearly equal and top-K order is float noise),
and writes to DIR:

* ``original.pth``: the state dict in the original's (detectron2) layout,
  ``{'model': state_dict, 'iteration': 0}`` as detectron2's checkpointer writes it;
* ``records.pth``: for each image, through the original's test-time pipeline (detrex's
  ``DetrDatasetMapper``, ``ResizeShortestEdge``): the decoded and resized image, the
  normalized batch, the ViT map, the pyramid and neck features, the encoder memory, the
  encoder's top-K proposals, each decoder layer's logits and boxes, and the final
  detections after the original's postprocess; and for one training batch of the
  images with their boxes: the encoder's top-K proposals, the denoising queries the
  original drew (seeded: both sides replay the same draws from ``torch.manual_seed``), the
  Hungarian assignments of every call of its matcher, and its weighted loss dict.

``--check`` only builds the model and runs one image (the installer's check).
``--time HxW [--iters 10]`` times the original's eager inference on one HxW image (the
latency table's row, docs/benchmarks.md): the median and p90 seconds over the iterations
after one warm-up, with ``torch.get_num_threads()`` threads.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import sys
import types

# Presets: overrides of the original's own LazyConfig (dotted keys, python values).
# 'b' is the published model as the original configures it (pretrained weights off).
PRESETS = {
    'b': [],
    's': ['model.backbone.net.model_name="vit_small_patch14_dinov2.lvd142m"'],
    # the same architecture made small (the committed fixture of tests/parity/)
    'tiny': [
        'model.backbone.net.model_name="vit_small_patch14_dinov2.lvd142m"',
        '+model.backbone.net.depth=2', '+model.backbone.net.embed_dim=192',
        '+model.backbone.net.num_heads=3', '+model.backbone.net.img_size=224',
        'model.backbone.out_channels=64',
        'model.transformer.encoder.num_layers=2', 'model.transformer.decoder.num_layers=2',
        'model.transformer.encoder.feedforward_dim=256',
        'model.transformer.decoder.feedforward_dim=256', 'model.num_queries=100',
    ],
}
# the test-time resize of each preset: (short edge, max size)
TEST_SIZES = {'b': (800, 1333), 's': (800, 1333), 'tiny': (120, 200)}
CONFIG = 'projects/dino_dinov2/configs/models/dino_dinov2.py'


def bind_original(src: str) -> str:
    """Make ``projects.dino_dinov2`` the original's package (SRC/edge), whatever else is on
    sys.path: this project's package has the same name, and as a regular package it would
    win over the original's namespace package in any sys.path order."""
    edge = osp.join(src, 'edge') if osp.isdir(osp.join(src, 'edge')) else src
    pkg_dir = osp.join(edge, 'projects', 'dino_dinov2')
    if not osp.isfile(osp.join(pkg_dir, 'modeling', 'exportable', 'dino.py')):
        sys.exit(f'error: {edge} is not the original dgcnz/edge tree '
                 '(no projects/dino_dinov2/modeling/exportable/dino.py)')
    for name, path in (('projects', osp.join(edge, 'projects')),
                       ('projects.dino_dinov2', pkg_dir)):
        mod = types.ModuleType(name)
        mod.__path__ = [path]
        sys.modules[name] = mod
    sys.modules['projects'].dino_dinov2 = sys.modules['projects.dino_dinov2']
    sys.path.insert(0, edge)
    return edge


def build_model(edge: str, preset: str, seed: int):
    import torch
    from detectron2.config import LazyConfig, instantiate
    cfg = LazyConfig.load(osp.join(edge, CONFIG))
    overrides = ['model.backbone.net.pretrained=False'] + PRESETS[preset]
    cfg = LazyConfig.apply_overrides(cfg, overrides)
    if preset == 'tiny':  # the ChannelMapper reads the pyramid's width from ShapeSpecs
        from detectron2.layers import ShapeSpec
        channels = cfg.model.backbone.out_channels
        cfg.model.neck.input_shapes = {k: ShapeSpec(channels=channels)
                                       for k in cfg.model.neck.input_shapes}
        overrides = overrides + [f'model.neck.input_shapes.*.channels={channels}']
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    model.eval()
    return model, overrides


def perturb(model, seed: int, scale: float, round_fp16: bool) -> int:
    """Add seeded N(0, scale) noise to every trained (non-ViT) parameter; returns the
    number of values changed. With ``round_fp16`` every parameter is then rounded to a
    float16 value, so the fixture can be stored in half the bytes and loaded exactly."""
    import torch
    gen = torch.Generator().manual_seed(seed + 1)
    changed = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith('backbone.net.'):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
                changed += p.numel()
        if round_fp16:  # the weights; buffers (pixel mean and std) stay as they are
            for p in model.parameters():
                p.copy_(p.half().float())
    return changed


def test_mapper(short: int, max_size: int):
    """detrex's test-time mapper of ``configs/common/data/coco_detr.py`` at this size."""
    import detectron2.data.transforms as T
    from detrex.data import DetrDatasetMapper
    return DetrDatasetMapper(
        augmentation=[T.ResizeShortestEdge(short_edge_length=short, max_size=max_size)],
        augmentation_with_crop=None, is_train=False, mask_on=False, img_format='RGB')


class Recorder:
    """Forward hooks and wrappers on the original's modules; what they saw goes in
    ``self.data`` (CPU float32 clones)."""

    def __init__(self, model):
        self.model = model
        self.data = {}
        self.matches = []
        self.handles = []
        net = model.backbone.net
        self._hook(net, 'vit', lambda i, o: o['p-1'])
        self._hook(net, 'batch', lambda i, o: i[0])
        self._hook(model.backbone, 'pyramid',
                   lambda i, o: [o[k] for k in model.backbone._out_features])
        self._hook(model.neck, 'neck', lambda i, o: list(o))
        self._hook(model.transformer.encoder, 'memory', lambda i, o: o)
        self._hook(model.transformer, 'transformer', lambda i, o: o)
        orig_aux = model._set_aux_loss

        def set_aux_loss(outputs_class, outputs_coord):
            self.data.setdefault('aux_calls', []).append(
                (outputs_class.detach().clone(), outputs_coord.detach().clone()))
            return orig_aux(outputs_class, outputs_coord)
        model._set_aux_loss = set_aux_loss
        orig_cdn = model.prepare_for_cdn

        def prepare_for_cdn(*args, **kwargs):
            out = orig_cdn(*args, **kwargs)
            self.data['dn'] = out
            return out
        model.prepare_for_cdn = prepare_for_cdn
        self._hook(model.label_enc, 'dn_labels', lambda i, o: i[0])
        matcher = model.criterion.matcher
        orig_match = matcher.forward

        def match(outputs, targets, *args, **kwargs):
            indices = orig_match(outputs, targets, *args, **kwargs)
            self.matches.append([(a.clone(), b.clone()) for a, b in indices])
            return indices
        matcher.forward = match

    def _hook(self, module, key, pick):
        def hook(mod, inputs, output):
            self.data[key] = _detach(pick(inputs, output))
        self.handles.append(module.register_forward_hook(hook))

    def reset(self):
        self.data = {}
        self.matches = []


# (this file runs where ``projects.dino_dinov2`` is the original's package: it cannot import
# this project's helpers, tools/parity/original_parity.py's twins of these two included)
def _detach(x):
    import torch
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return [_detach(v) for v in x]
    return x


def record_eval(model, rec: Recorder, sample: dict) -> dict:
    import torch
    rec.reset()
    with torch.no_grad():
        out = model([{'image': sample['image'], 'height': sample['height'],
                      'width': sample['width']}])[0]['instances']
    d = rec.data
    inter_states, init_ref, inter_refs, enc_state, enc_ref = d['transformer']
    logits, boxes = d['aux_calls'][-1]  # (layers, 1, queries, classes / 4), cxcywh in 0..1
    with torch.no_grad():
        enc_logits = model.transformer.decoder.class_embed[-1](enc_state)
    return dict(
        image=sample['image'].clone(), height=sample['height'], width=sample['width'],
        batch=d['batch'], vit=d['vit'], pyramid=d['pyramid'], neck=d['neck'],
        memory=d['memory'], enc_logits=enc_logits, enc_boxes=enc_ref.detach().clone(),
        dec_logits=logits, dec_boxes=boxes,
        det_boxes=out.pred_boxes.tensor.detach().clone(), det_scores=out.scores.clone(),
        det_labels=out.pred_classes.clone())


def record_train(model, rec: Recorder, samples: list, boxes: list, labels: list,
                 seed: int) -> dict:
    import torch
    from detectron2.structures import Boxes, Instances
    batched = []
    for s, b, lab in zip(samples, boxes, labels):
        inst = Instances(tuple(s['image'].shape[1:]))
        inst.gt_boxes = Boxes(torch.tensor(b, dtype=torch.float32))
        inst.gt_classes = torch.tensor(lab, dtype=torch.int64)
        batched.append({'image': s['image'], 'height': s['height'], 'width': s['width'],
                        'instances': inst})
    rec.reset()
    model.train()
    torch.manual_seed(seed)
    losses = model(batched)
    model.eval()
    q_label, q_bbox, attn_mask, dn_meta = rec.data['dn']
    _, _, _, enc_state, enc_ref = rec.data['transformer']
    with torch.no_grad():
        enc_logits = model.transformer.decoder.class_embed[-1](enc_state)
    return dict(
        enc_logits=enc_logits.detach().clone(), enc_boxes=enc_ref.detach().clone(),
        seed=seed, boxes=[torch.tensor(b, dtype=torch.float32) for b in boxes],
        labels=[torch.tensor(lab) for lab in labels],
        dn_labels=rec.data['dn_labels'], dn_bbox_query=q_bbox.detach().clone(),
        dn_attn_mask=attn_mask.clone(),
        dn_meta={k: int(v) for k, v in dn_meta.items() if k in ('single_padding', 'dn_num')},
        matches=rec.matches,
        losses={k: v.detach().clone() for k, v in losses.items()})


def eager_call(model, size: str):
    """A function running the original's eager ``model([{'image': ...}])`` (its
    preprocessing and postprocess included) on one seeded HxW uint8 image, no grad."""
    import torch
    try:
        h, w = (int(v) for v in size.lower().split('x'))
    except ValueError:
        sys.exit(f'error: {size!r}: give HxW, e.g. 512x512')
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    batch = [{'image': image, 'height': h, 'width': w}]

    def call():
        with torch.no_grad():
            return model(batch)
    return call


def time_inference(model, size: str, iters: int, preset: str, n_params: int) -> None:
    """Median and p90 seconds of :func:`eager_call` over ``iters`` after one warm-up."""
    import time

    import numpy as np
    import torch
    call = eager_call(model, size)
    times = []
    for i in range(iters + 1):
        start = time.perf_counter()
        call()
        if i:  # the first is the warm-up
            times.append(time.perf_counter() - start)
    median, p90 = np.median(times), np.percentile(times, 90)
    print(f'[original] {preset}: {n_params / 1e6:.1f}M values, eager float32 {size}, '
          f'batch 1, {torch.get_num_threads()} threads: {median:.2f} s median, '
          f'{p90:.2f} s p90 over {iters}')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--src', default=os.environ.get('ORIGINAL_SRC'),
                        help='folder with edge/, detrex/, detectron2/ (install_original.sh)')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='tiny')
    parser.add_argument('--images', nargs='*', default=[], help='JPEG files')
    parser.add_argument('--boxes', help='JSON: per image a list of [x1, y1, x2, y2, '
                        'class] in original-image pixels (contiguous class ids 0..79) for '
                        'the training batch; default: no training record')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--perturb', type=float, default=0.02,
                        help='std of the noise added to the non-ViT weights')
    parser.add_argument('--fp16-weights', action='store_true',
                        help='round every weight to float16 and store it so (the fixture)')
    parser.add_argument('--out', help='output folder')
    parser.add_argument('--check', action='store_true', help='build and run one image only')
    parser.add_argument('--time', metavar='HxW',
                        help='time eager inference on one HxW image (no --out needed)')
    parser.add_argument('--iters', type=int, default=10, help='timed iterations (--time)')
    parser.add_argument('--threads', type=int, help='torch threads (default: every core)')
    args = parser.parse_args(argv)
    if not args.src:
        found = [p for p in sys.path if osp.basename(p.rstrip('/')) == 'edge']
        if not found:
            sys.exit('error: give --src (the folder install_original.sh was given)')
        args.src = osp.dirname(found[0].rstrip('/'))
    edge = bind_original(args.src)

    import numpy as np
    import timm
    import torch
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    model, overrides = build_model(edge, args.preset, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    if args.time:
        time_inference(model, args.time, args.iters, args.preset, n_params)
        return
    if args.check:
        x = torch.zeros(3, 64, 80, dtype=torch.uint8)
        with torch.no_grad():
            out = model([{'image': x, 'height': 64, 'width': 80}])[0]['instances']
        print(f'[original] {args.preset}: {n_params / 1e6:.1f}M values, '
              f'{len(out)} detections on a 64x80 image')
        return
    if not args.out:
        sys.exit('error: give --out DIR')
    os.makedirs(args.out, exist_ok=True)
    changed = perturb(model, args.seed, args.perturb, args.fp16_weights)
    state = model.state_dict()
    if args.fp16_weights:
        buffers = {name for name, _ in model.named_buffers()}
        state = {k: v if k in buffers else v.half() for k, v in state.items()}
    torch.save({'model': state, 'iteration': 0}, osp.join(args.out, 'original.pth'))

    short, max_size = TEST_SIZES[args.preset]
    mapper = test_mapper(short, max_size)
    images = [p for pattern in args.images for p in sorted(glob.glob(pattern))]
    samples = []
    for path in images:
        from PIL import Image
        with Image.open(path) as im:
            w, h = im.size
        samples.append(mapper({'file_name': path, 'height': h, 'width': w, 'image_id': 0}))
    rec = Recorder(model)
    evals = [record_eval(model, rec, s) for s in samples]
    train = None
    if args.boxes:
        with open(args.boxes) as f:
            per_image = json.load(f)
        boxes, labels = [], []
        for s, objs in zip(samples, per_image):
            sy = s['image'].shape[1] / s['height']
            sx = s['image'].shape[2] / s['width']
            boxes.append([[o[0] * sx, o[1] * sy, o[2] * sx, o[3] * sy] for o in objs])
            labels.append([int(o[4]) for o in objs])
        train = record_train(model, rec, samples, boxes, labels, args.seed)
    records = dict(
        meta=dict(preset=args.preset, config=CONFIG, overrides=overrides, seed=args.seed,
                  perturb=args.perturb, perturbed_values=changed,
                  fp16_weights=args.fp16_weights, test_size=[short, max_size],
                  images=[osp.basename(p) for p in images], torch=str(torch.__version__),
                  timm=str(timm.__version__), numpy=str(np.__version__)),
        eval=evals, train=train)
    torch.save(records, osp.join(args.out, 'records.pth'))
    losses = f', training losses: {len(train["losses"])} terms' if train else ''
    print(f'[original] {args.preset}: {n_params / 1e6:.1f}M values ({changed} perturbed); '
          f'{len(evals)} images recorded{losses} -> {args.out}')


if __name__ == '__main__':
    main()
