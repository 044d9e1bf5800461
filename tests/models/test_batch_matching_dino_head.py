"""The head's batched Hungarian matching and losses against mmdet's ``HungarianAssigner``
(per image and layer) and ``DINOHead``."""
import copy
import warnings

import pytest
import torch
from mmdet.models.task_modules.assigners import HungarianAssigner
from mmdet.registry import TASK_UTILS
from mmengine.structures import InstanceData
from torch.utils._python_dispatch import TorchDispatchMode

from projects.dino_dinov2.models import BatchHungarianAssigner
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
    # predictions) x 5 prediction sets (decoder layers + encoder proposals + an empty one)
    images = [_image(5, 0), _image(0, 1), _image(9, 2)]
    preds = []
    for i in range(len(images)):
        sets = []
        for layer in range(4):
            p = _preds(7 if layer == 3 else 20, 10 * layer + i)
            if layer == 2:  # duplicated predictions: ties the solver must break alike
                p = InstanceData.cat([p[:10], p[:10]])
            sets.append(p)
        preds.append(sets + [_preds(0, 99)])
    results = batch.assign_batch(preds, [g for g, _ in images], [m for _, m in images])
    assert [len(r) for r in results] == [5, 5, 5]
    for sets, (gt, meta), got in zip(preds, images, results):
        for p, (pos, pos_gt, num_neg) in zip(sets, got):
            want = stock.assign(p, gt, meta).gt_inds
            assert pos.tolist() == torch.nonzero(want > 0).flatten().tolist()
            assert pos_gt.tolist() == (want[want > 0] - 1).tolist()
            assert num_neg == int((want == 0).sum())


def test_batch_assign_rejects_mismatched_lists():
    with pytest.raises(ValueError, match='2 images, 1 gt sets'):
        BatchHungarianAssigner(COSTS).assign_batch([[_preds(3, 0)]] * 2, [_image(2, 0)[0]],
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
    """All sets matched in one call and their losses in one pass: mmdet's ``DINOHead``
    values (summed in another order), with no data-dependent shapes on the device."""
    model, inputs, data_samples = head_inputs
    head = model.bbox_head
    stock_head = build_detector(**STOCK).bbox_head
    stock_head.load_state_dict(head.state_dict())
    stock_head.train()
    l_ours, g_ours, h_ours, syncs_ours = _head_loss(head, inputs, data_samples)
    l_stock, g_stock, h_stock, syncs_stock = _head_loss(stock_head, inputs, data_samples)
    assert list(l_ours) == list(l_stock)
    for k in l_stock:
        torch.testing.assert_close(l_ours[k].reshape(-1), l_stock[k].reshape(-1),
                                   rtol=1e-6, atol=0, msg=k)
    assert g_ours.keys() == g_stock.keys() and g_stock
    for k in g_stock:
        torch.testing.assert_close(g_ours[k], g_stock[k], rtol=1e-5, atol=1e-8, msg=k)
    torch.testing.assert_close(h_ours, h_stock, rtol=1e-5, atol=1e-8)
    # Stock: nonzero + unique for each image of each matched set (2 decoder layers and
    # the encoder proposals here). Batched: the indices stay on the host.
    num_sets, num_images = inputs['hidden_states'].shape[0] + 1, len(data_samples)
    assert syncs_stock >= 2 * num_sets * num_images
    assert syncs_ours == 0


@pytest.mark.parametrize('change, words', [
    (dict(train_cfg=dict(assigner=dict(type='HungarianAssigner'))), 'BatchHungarianAssigner'),
    (dict(bbox_head=dict(loss_bbox=dict(type='SmoothL1Loss', loss_weight=5.0))),
     'SmoothL1Loss'),
])
def test_head_refuses_parts_it_does_not_compute(change, words):
    from projects.dino_dinov2.errors import ConfigError
    with pytest.raises(ConfigError, match=words):
        build_detector(**change)


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
    detectron2's ``detector_postprocess`` drops it in the original."""
    head = build_detector().bbox_head
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
