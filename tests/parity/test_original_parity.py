"""This project against the original's own code, on a committed recording of it.

``fixtures/`` holds what ``tools/parity/original_outputs.py --preset tiny`` wrote in the
original's environment (dgcnz/edge d319bb0, detrex 0627b75, detectron2 dca70bb, on the CPU;
the command is in fixtures/README.md): the original's model made small through its own
config (ViT-S of depth 2 and width 192, pyramid width 64, 2+2 layers, FFN 256, 100
queries), its perturbed weights in its own layout (``original.pth``, float16 values) and
what it computed (``records.pth``) on the two JPEGs beside them. Here the weights are
converted and every recorded stage is compared with this project's model; a stage that is
recorded and not compared, or a tensor that is not mapped, fails.
"""
import json
import os.path as osp

import pytest
import torch

from helpers import load_tool
import original_parity as op
from projects.dino_dinov2.checkpoint import load_local_checkpoint, original_state_of
from projects.dino_dinov2.original_checkpoint import (COCO_CATEGORIES, ConversionError,
                                                      class_permutation, convert_state)

FIXTURES = osp.join(osp.dirname(osp.abspath(__file__)), 'fixtures')
ORIGINAL = osp.join(FIXTURES, 'original.pth')


@pytest.fixture(scope='module')
def records():
    return torch.load(osp.join(FIXTURES, 'records.pth'), map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def cfg(records):
    assert records['meta']['preset'] == 'tiny'
    return op.preset_config('tiny', records['meta']['test_size'])


@pytest.fixture(scope='module')
def original_state():
    return original_state_of(load_local_checkpoint(ORIGINAL, map_location='cpu'))


@pytest.fixture(scope='module')
def converted(cfg):
    return op.load_original(ORIGINAL, cfg)


@pytest.fixture(scope='module')
def model_and_hooks(cfg, converted):
    model = op.build_model(cfg, converted[0])
    return model, op._Hooks(model)


def test_every_tensor_of_the_original_has_one_place(converted, original_state, model_and_hooks):
    state, info = converted
    model, _ = model_and_hooks
    assert set(state) == set(model.state_dict())
    # each of the original's tensors is converted, or a checked alias / pixel statistic
    assert info['converted'] + info['aliases_and_stats'] == len(original_state)
    assert info['aliases_and_stats'] == 2 + sum(
        k.startswith(('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.'))
        for k in original_state)


@pytest.mark.parametrize('change', ['drop', 'extra', 'alias'])
def test_a_tensor_left_over_is_named(change, original_state, model_and_hooks):
    model, _ = model_and_hooks
    state = dict(original_state)
    if change == 'drop':  # one mapped tensor missing: the model's tensor is named
        del state['transformer.decoder.layers.1.attentions.1.value_proj.weight']
        match = 'decoder.layers.1.cross_attn.value_proj.weight'
    elif change == 'extra':  # a tensor the model has no place for
        state['transformer.decoder.extra_head.weight'] = torch.zeros(2)
        match = 'transformer.decoder.extra_head.weight'
    else:  # the decoder's copy of the head is not the head
        key = 'transformer.decoder.class_embed.1.bias'
        state[key] = state[key] + 1
        match = key
    with pytest.raises(ConversionError, match=match.replace('.', r'\.')):
        convert_state(state, model.state_dict())


def test_coco_class_order_follows_the_category_ids(original_state, model_and_hooks):
    from mmdet.datasets import CocoDataset
    classes = CocoDataset.METAINFO['classes']
    assert class_permutation(classes) == list(range(80))  # mmdet and detectron2 agree
    model, _ = model_and_hooks
    shuffled = list(reversed(classes))
    state, info = convert_state(original_state, model.state_dict(), classes=shuffled)
    assert info['classes'] == shuffled
    for ours, theirs in (('bbox_head.cls_branches.0.bias', 'class_embed.0.bias'),
                         ('dn_query_generator.label_embedding.weight', 'label_enc.weight')):
        assert torch.equal(state[ours], original_state[theirs].flip(0))
    with pytest.raises(ConversionError, match="'red car'"):
        class_permutation(['red car'] + list(classes[1:]))
    assert len(COCO_CATEGORIES) == 80


def test_preprocessing_gives_the_originals_input(records, cfg):
    """The JPEG through this project's test pipeline and through detectron2's (PIL decode,
    ResizeShortestEdge with PIL's bilinear): the same uint8 tensor."""
    for name, rec in zip(records['meta']['images'], records['eval']):
        ours = op.preprocess(cfg, osp.join(FIXTURES, name))
        assert ours.dtype == torch.uint8 and torch.equal(ours, rec['image']), name


def test_inference_equals_the_originals_stage_by_stage(records, model_and_hooks):
    model, hooks = model_and_hooks
    for rec in records['eval']:
        ours = op.run_eval(model, hooks, rec['image'], rec['height'], rec['width'])
        rows = op.compare_eval(ours, rec)
        stages = {r['stage'] for r in rows}
        assert stages == set(rec) - set(op.INPUT_KEYS)  # every recorded stage compared
        assert {'batch', 'vit', 'pyramid', 'neck', 'memory', 'enc_logits', 'enc_boxes',
                'dec_logits', 'dec_boxes', 'det_boxes', 'det_scores', 'det_labels'} <= stages
        bad = [r for r in rows if not r['ok']]
        assert not bad, op.format_rows([dict(r, image='') for r in bad])
        # the order test means something: the closest two of the top 100 scores are more
        # than twice the two models' largest score difference apart, so no pair can swap
        # (not a tie decided by float noise; the difference depends on the CPU's kernels)
        top = rec['det_scores'][:100]
        score_diff = next(r['value'] for r in rows if r['stage'] == 'det_scores')
        assert float((top[:-1] - top[1:]).min()) > max(2 * score_diff, 1e-7)


def test_training_batch_equals_the_originals(records, model_and_hooks):
    model, hooks = model_and_hooks
    train = records['train']
    evals = records['eval']
    ours = op.run_train(model, hooks, [e['image'] for e in evals],
                        [(e['height'], e['width']) for e in evals], train['boxes'],
                        train['labels'], train['seed'])
    rows = op.compare_train(ours, train, [tuple(e['image'].shape[1:]) for e in evals])
    stages = {r['stage'] for r in rows}
    assert {'enc_logits (training)', 'enc_boxes (training)', 'dn_labels', 'dn_bbox_query',
            'dn_attn_mask', 'matches'} <= stages
    assert len([s for s in stages if s.startswith('loss ')]) == len(train['losses']) == 15
    bad = [r for r in rows if not r['ok']]
    assert not bad, op.format_rows([dict(r, image='') for r in bad])
    assert all(torch.isfinite(v).all() for v in ours['losses'].values())


def _coco_val(root):
    """The fixture's two images as a COCO val set (boxes of fixtures/boxes.json)."""
    import shutil
    from PIL import Image
    with open(osp.join(FIXTURES, 'boxes.json')) as f:
        per_image = json.load(f)
    img_dir = root / 'val'
    img_dir.mkdir()
    images, anns = [], []
    for i, name in enumerate(['image_96x72.jpg', 'image_72x96.jpg']):
        shutil.copy(osp.join(FIXTURES, name), img_dir / name)
        w, h = Image.open(img_dir / name).size
        images.append(dict(id=i + 1, file_name=name, width=w, height=h))
        for x0, y0, x1, y1, c in per_image[i]:
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=COCO_CATEGORIES[c][0],
                             bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                             iscrowd=0))
    ann = root / 'val.json'
    ann.write_text(json.dumps(dict(images=images, annotations=anns, categories=[
        dict(id=i, name=n) for i, n in COCO_CATEGORIES])))
    return [f'test_dataloader.dataset.data_root={root}/',
            'test_dataloader.dataset.ann_file=val.json',
            'test_dataloader.dataset.data_prefix.img=val/', f'test_evaluator.ann_file={ann}',
            'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
            'test_dataloader.dataset.pipeline.1.scale=(200,120)']


def test_converted_checkpoint_in_the_tools(records, tmp_path, monkeypatch, capsys):
    """tools/convert_original.py writes a checkpoint that tools/test.py evaluates and
    tools/infer.py runs, with the original's detections and COCO's class names."""
    monkeypatch.setenv('LOCAL_RANK', '0')
    config = osp.join(op.ROOT, 'configs', 'dino_dinov2_s_12ep.py')
    out = str(tmp_path / 'converted.pth')
    assert load_tool('convert_original').main(
        [ORIGINAL, out, '--config', config, '--cfg-options', *op.TINY_CFG_OPTIONS]) == 0
    assert 'converted 181 tensors' in capsys.readouterr().out
    ckpt = torch.load(out, map_location='cpu', weights_only=True)
    assert ckpt['meta']['dataset_meta']['classes'][0] == 'person'
    assert ckpt['meta']['converted_from']['sha256']
    from projects.dino_dinov2.checkpoint import CheckpointError, check_checkpoint_for
    with pytest.raises(CheckpointError, match='without training state.*--load-from'):
        check_checkpoint_for(out, '--resume')  # weights only: a new run, not a resume
    options = [*op.TINY_CFG_OPTIONS, *_coco_val(tmp_path)]
    metrics = load_tool('test').main([config, out, '--work-dir', str(tmp_path / 'work'),
                                      '--cfg-options', *options])
    assert 'coco/bbox_mAP' in metrics
    result = load_tool('infer').main([config, out, osp.join(FIXTURES, 'image_96x72.jpg'),
                                      '--out-dir', str(tmp_path / 'infer'), '--device', 'cpu',
                                      '--score-thr', '0', '--no-draw', '--cfg-options',
                                      *options])
    assert result == 0
    with open(tmp_path / 'infer' / 'predictions.json') as f:
        dets = json.load(f)['images'][0]['detections']
    rec = records['eval'][0]
    assert dets[0]['label_name'] == COCO_CATEGORIES[int(rec['det_labels'][0])][1]
    assert dets[0]['bbox'] == pytest.approx(rec['det_boxes'][0].tolist(), abs=0.01)
    # and fine-tuning from the converted file, on 3 classes
    from projects.dino_dinov2.engine.fine_tune import load_for_fine_tuning
    from projects.dino_dinov2.cli import build_target_model
    cfg = op.preset_config('tiny')
    cfg.model.bbox_head.num_classes = 3
    line = load_for_fine_tuning(build_target_model(cfg), out, ['a', 'b', 'c'])
    assert 'converted in memory' not in line and '(80 -> 3 classes)' in line


def test_fine_tuning_from_the_original_checkpoint(cfg):
    """--load-from the original's file: converted in memory, the class-dependent tensors
    re-initialised for another class count, and the log says both."""
    from projects.dino_dinov2.engine.fine_tune import load_for_fine_tuning
    from projects.dino_dinov2.cli import build_target_model
    import copy
    small = copy.deepcopy(cfg)
    small.model.bbox_head.num_classes = 3
    model = build_target_model(small)
    line = load_for_fine_tuning(model, ORIGINAL, ['a', 'b', 'c'])
    assert 'converted in memory' in line and '(80 -> 3 classes)' in line
    assert 'dn_query_generator.label_embedding.weight' in line
    state = original_state_of(load_local_checkpoint(ORIGINAL, map_location='cpu'))
    assert torch.equal(model.state_dict()['level_embed'],
                       state['transformer.level_embeds'].float())


def test_conversion_errors_name_the_problem(tmp_path):
    """Another architecture, a file that is not the original's: one line naming the keys,
    and nothing written as OUT."""
    tool = load_tool('convert_original')
    out = tmp_path / 'out.pth'
    # the fixture's 2+2 layers and 192-wide ViT against the ViT-B recipe (default config)
    with pytest.raises(ConversionError, match=r'tensors of this model are not in the '
                       r'checkpoint: .*decoder\.layers\.2-5\.\* \(\d+ tensors\)'):
        tool.main([ORIGINAL, str(out)])
    other = tmp_path / 'other.pth'
    torch.save({'model': {'backbone.bottom_up.stem.conv1.weight': torch.zeros(1)},
                'iteration': 5}, other)
    from projects.dino_dinov2.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match='is not a checkpoint of the original'):
        tool.main([str(other), str(out)])
    assert not out.exists()
