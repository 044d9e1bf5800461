"""Batched Hungarian matching against mmdet's per-image, per-layer matching."""
import copy
import warnings

import pytest
import torch
from mmdet.models.task_modules.assigners import HungarianAssigner
from mmdet.registry import TASK_UTILS
from mmengine.structures import InstanceData
from torch.utils._python_dispatch import TorchDispatchMode

from projects.dino_dinov2.models import BatchHungarianAssigner, BatchMatchingDINOHead
from tiny_models import build_detector, make_batch

# mmdet's own head and assigner: per image and layer
STOCK = dict(bbox_head=dict(type='DINOHead'),
             train_cfg=dict(assigner=dict(type='HungarianAssigner')))

COSTS = [
    dict(type='FocalLossCost', weight=2.0),
    dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
    dict(type='IoUCost', iou_mode='giou', weight=2.0)
]


def _image(num_gts, seed, h=96, w=128):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_gts, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = torch.rand(num_gts, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 2
    gt = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                      labels=torch.randint(0, 3, (num_gts, ), generator=g))
    return gt, dict(img_shape=(h, w))


def _preds(num_preds, seed, h=96, w=128):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_preds, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = torch.rand(num_preds, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 1
    return InstanceData(scores=torch.randn(num_preds, 3, generator=g),
                        bboxes=torch.cat([xy, xy + wh], 1))


def test_registered_under_its_class_name():
    assigner = TASK_UTILS.build(dict(type='BatchHungarianAssigner', match_costs=COSTS))
    assert type(assigner) is BatchHungarianAssigner


def test_batch_assignments_equal_stock():
    stock = HungarianAssigner(COSTS)
    batch = BatchHungarianAssigner(COSTS)
    # 3 images (one without objects, one with more objects than some sets have
    # predictions) x 4 prediction sets (decoder layers + encoder proposals)
    images = [_image(5, 0), _image(0, 1), _image(9, 2)]
    preds, gts, metas = [], [], []
    for layer in range(4):
        for i, (gt, meta) in enumerate(images):
            p = _preds(7 if layer == 3 else 20, 10 * layer + i)
            if layer == 2:  # duplicated predictions: ties the solver must break alike
                p = InstanceData.cat([p[:10], p[:10]])
            preds.append(p)
            gts.append(gt)
            metas.append(meta)
    preds.append(_preds(0, 99))  # an empty prediction set
    gts.append(images[0][0])
    metas.append(images[0][1])
    results = batch.assign_batch(preds, gts, metas)
    assert len(results) == len(preds)
    for p, gt, meta, got in zip(preds, gts, metas, results):
        want = stock.assign(p, gt, meta)
        assert got.num_gts == want.num_gts
        assert torch.equal(got.gt_inds, want.gt_inds)
        assert torch.equal(got.labels, want.labels)
        # the extras a head builds its targets from, without nonzero() on the device
        pos = got.get_extra_property('pos_inds')
        assert torch.equal(pos, torch.nonzero(want.gt_inds > 0).flatten())
        assert torch.equal(got.get_extra_property('neg_inds'),
                           torch.nonzero(want.gt_inds == 0).flatten())
        assert torch.equal(got.get_extra_property('pos_assigned_gt_inds'),
                           want.gt_inds[pos] - 1)
    # the single-pair interface is the stock one
    single = batch.assign(preds[0], gts[0], metas[0])
    assert torch.equal(single.gt_inds, stock.assign(preds[0], gts[0], metas[0]).gt_inds)


def test_cross_batch_costs_assign_as_stock():
    """detrex's layout (one matrix for all images of a call, boxes normalised per image,
    copied whole) finds the stock matches, on images of different sizes."""
    stock = HungarianAssigner(COSTS)
    crossed = BatchHungarianAssigner(COSTS, batched_costs=True)
    shapes = [(96, 128), (128, 80), (64, 64)]
    images = [_image(n, i, h, w) for i, (n, (h, w)) in enumerate(zip((5, 0, 8), shapes))]
    preds = [_preds(20, 10 + i, h, w) for i, (h, w) in enumerate(shapes)]
    results = crossed.assign_batch(preds, [g for g, _ in images], [m for _, m in images])
    for p, (gt, meta), got in zip(preds, images, results):
        want = stock.assign(p, gt, meta)
        assert torch.equal(got.gt_inds, want.gt_inds)
        assert torch.equal(got.labels, want.labels)


def test_layer_matching_head_equals_stock_dino_head(head_inputs):
    """The original-equivalent head (one assigner call per layer, detrex's cost layout)
    gives the stock losses."""
    model, inputs, data_samples = head_inputs
    layer_head = build_detector(bbox_head=dict(matching='layer'), train_cfg=dict(
        assigner=dict(batched_costs=True))).bbox_head
    stock_head = build_detector(**STOCK).bbox_head
    layer_head.load_state_dict(model.bbox_head.state_dict())
    stock_head.load_state_dict(model.bbox_head.state_dict())
    layer_head.train()
    stock_head.train()
    calls = []
    assign_batch = layer_head.assigner.assign_batch
    layer_head.assigner.assign_batch = lambda *a: calls.append(len(a[0])) or assign_batch(*a)
    l_layer, g_layer, _, _ = _head_loss(layer_head, inputs, data_samples)
    l_stock, g_stock, _, _ = _head_loss(stock_head, inputs, data_samples)
    for k in l_stock:
        torch.testing.assert_close(l_layer[k], l_stock[k], rtol=0, atol=0, msg=k)
    for k in g_stock:
        torch.testing.assert_close(g_layer[k], g_stock[k], rtol=0, atol=0, msg=k)
    # one call (one host copy) per decoder layer and one for the encoder proposals
    num_layers, num_images = inputs['hidden_states'].shape[0], len(data_samples)
    assert calls == [num_images] * (num_layers + 1)


def test_head_rejects_an_unknown_matching_mode():
    with pytest.raises(ValueError, match="matching must be one of"):
        build_detector(bbox_head=dict(matching='image'))


def test_batch_assign_rejects_mismatched_lists():
    with pytest.raises(ValueError, match='2 prediction sets, 1 gt sets'):
        BatchHungarianAssigner(COSTS).assign_batch([_preds(3, 0)] * 2, [_image(2, 0)[0]],
                                                   [{}])


class _CountShapeSyncs(TorchDispatchMode):
    """Counts ops whose output size depends on tensor values: on a GPU each makes the
    host wait for the device (as do the assigner's ``.cpu()`` copies, invisible here)."""

    OPS = ('aten.nonzero', 'aten.unique', 'aten._unique')

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.OPS):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope='module')
def head_inputs():
    """Real DINO head inputs (2 decoder layers, 50 queries, denoising) of a tiny model."""
    model = build_detector()
    model.train()
    batch = make_batch(model, num_items=(4, 1))
    torch.manual_seed(1)
    with torch.no_grad():
        feats = model.extract_feat(batch['inputs'])
        inputs = model.forward_transformer(feats, batch['data_samples'])
    return model, inputs, batch['data_samples']


def _head_loss(head, inputs, data_samples):
    head.zero_grad(set_to_none=True)
    hidden = inputs['hidden_states'].detach().clone().requires_grad_()
    with _CountShapeSyncs() as syncs:
        losses = head.loss(**dict(inputs, hidden_states=hidden),
                           batch_data_samples=data_samples)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    grads = {n: p.grad for n, p in head.named_parameters() if p.grad is not None}
    return losses, grads, hidden.grad, syncs.count


def test_head_losses_and_gradients_equal_stock_dino_head(head_inputs):
    model, inputs, data_samples = head_inputs
    fast_head = model.bbox_head
    assert type(fast_head) is BatchMatchingDINOHead
    stock_head = build_detector(**STOCK).bbox_head
    assert type(stock_head).__name__ == 'DINOHead'
    stock_head.load_state_dict(fast_head.state_dict())
    stock_head.train()
    assert fast_head.batched_losses
    l_batched, g_batched, _, _ = _head_loss(fast_head, inputs, data_samples)
    fast_head.batched_losses = False  # mmdet's loss code on the batched matching
    try:
        l_fast, g_fast, h_fast, syncs_fast = _head_loss(fast_head, inputs, data_samples)
    finally:
        fast_head.batched_losses = True
    l_stock, g_stock, h_stock, syncs_stock = _head_loss(stock_head, inputs, data_samples)
    assert l_fast.keys() == l_stock.keys() == l_batched.keys()
    for k in l_stock:  # same assignments, same arithmetic: identical
        torch.testing.assert_close(l_fast[k], l_stock[k], rtol=0, atol=0, msg=k)
        # all sets' losses in one pass: the same values, summed in another order
        torch.testing.assert_close(l_batched[k].reshape(-1), l_stock[k].reshape(-1),
                                   rtol=1e-6, atol=0, msg=k)
    assert g_fast.keys() == g_stock.keys() == g_batched.keys() and g_stock
    for k in g_stock:
        torch.testing.assert_close(g_fast[k], g_stock[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(g_batched[k], g_stock[k], rtol=1e-5, atol=1e-8, msg=k)
    torch.testing.assert_close(h_fast, h_stock, rtol=0, atol=0)
    # Stock: nonzero + unique for each image of each matched set (2 decoder layers and
    # the encoder proposals here). Batched: the indices come back from the host ready.
    num_sets, num_images = inputs['hidden_states'].shape[0] + 1, len(data_samples)
    assert syncs_stock >= 2 * num_sets * num_images
    assert syncs_fast == 0
    assert not fast_head._pending  # nothing left over for the next step


def test_head_matches_sets_it_was_not_given_up_front(head_inputs):
    """get_targets on other tensors (another caller) still matches, equal to stock."""
    model, inputs, data_samples = head_inputs
    head = model.bbox_head
    scores = inputs['enc_outputs_class'].detach()
    boxes = inputs['enc_outputs_coord'].detach()
    gts = [s.gt_instances for s in data_samples]
    metas = [s.metainfo for s in data_samples]
    got = head.get_targets(list(scores), list(boxes), gts, metas)
    stock = copy.deepcopy(head)
    stock.assigner = HungarianAssigner(COSTS)
    want = type(head).__mro__[1].get_targets(stock, list(scores), list(boxes), gts, metas)
    for a, b in zip(got[:4], want[:4]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert got[4:] == want[4:]


def test_head_requires_the_batch_assigner():
    with pytest.raises(TypeError, match="assigner.type='BatchHungarianAssigner'"):
        build_detector(bbox_head=dict(type='BatchMatchingDINOHead'),
                       train_cfg=dict(assigner=dict(type='HungarianAssigner')))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU: counts syncs')
def test_head_on_gpu_synchronises_less(head_inputs):
    model, inputs, data_samples = head_inputs
    fast_head = copy.deepcopy(model.bbox_head).cuda()
    stock_head = build_detector(**STOCK).bbox_head.cuda().train()
    stock_head.load_state_dict(fast_head.state_dict())
    inputs = {k: (v.cuda() if torch.is_tensor(v) else
                  [t.cuda() for t in v] if isinstance(v, list) else v)
              for k, v in inputs.items()}
    data_samples = [s.to('cuda') for s in data_samples]
    counts = []
    for head in (fast_head, stock_head):
        _head_loss(head, inputs, data_samples)  # warm-up
        torch.cuda.set_sync_debug_mode('warn')
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                losses, *_ = _head_loss(head, inputs, data_samples)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        counts.append(sum('synchroniz' in str(w.message) for w in caught))
    # stock: >= 3 synchronisations (cost copy, nonzero x2) per image of each set
    num_sets, num_images = inputs['hidden_states'].shape[0] + 1, len(data_samples)
    assert counts[1] - counts[0] >= 2 * num_sets * num_images, counts


def test_empty_boxes_are_no_detections():
    """A box that clipping to the image leaves empty is dropped from the predictions, as
    detectron2's ``detector_postprocess`` drops it in the original; the switch keeps it."""
    from projects.dino_dinov2.models import BatchMatchingDINOHead
    head = build_detector().bbox_head
    assert isinstance(head, BatchMatchingDINOHead) and head.drop_empty_boxes
    scores = torch.full((4, head.num_classes), -5.0)
    scores[:, 0] = torch.tensor([3.0, 2.0, 1.0, 0.0])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2],    # inside
                          [1.2, 0.5, 0.2, 0.2],    # right of the image: empty once clipped
                          [0.5, -0.3, 0.2, 0.2],   # above it: empty
                          [0.9, 0.5, 0.4, 0.2]])   # partly outside: kept, clipped
    meta = dict(img_shape=(100, 200), scale_factor=(1.0, 1.0))
    head.test_cfg['max_per_img'] = 4
    kept = head._predict_by_feat_single(scores, boxes, meta)
    assert kept.scores.tolist() == pytest.approx(torch.tensor([3.0, 0.0]).sigmoid().tolist())
    assert kept.bboxes[1].tolist() == pytest.approx([140.0, 40.0, 200.0, 60.0])
    head.drop_empty_boxes = False
    assert len(head._predict_by_feat_single(scores, boxes, meta)) == 4
