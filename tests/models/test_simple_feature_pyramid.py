import pytest
import torch

from projects.dino_dinov2.models import LN2d, SimpleFeaturePyramid


def test_default_levels_and_strides():
    neck = SimpleFeaturePyramid(in_channels=384, out_channels=256)
    neck.init_weights()
    assert neck.strides == (8, 16, 32, 64)
    # a stride-16 map of a 100 x 148 image (padded to 112 x 160)
    outs = neck((torch.randn(2, 384, 7, 10), ))
    assert [tuple(o.shape) for o in outs] == [
        (2, 256, 14, 20), (2, 256, 7, 10), (2, 256, 3, 5), (2, 256, 2, 3)]


def test_configurable_scales():
    neck = SimpleFeaturePyramid(in_channels=64, out_channels=32,
                                scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=False)
    assert neck.strides == (4, 8, 16, 32)
    outs = neck((torch.randn(1, 64, 8, 8), ))
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4]
    assert all(o.shape[1] == 32 for o in outs)
    with pytest.raises(ValueError, match='scale factor 3.0'):
        SimpleFeaturePyramid(in_channels=64, scale_factors=(3.0, ))


def test_ln2d_normalises_channels():
    ln = LN2d(8)
    x = torch.randn(2, 8, 5, 5) * 3 + 1
    y = ln(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 5, 5), atol=1e-5, rtol=0)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8, ), eps=1e-6)
    torch.testing.assert_close(y, ref.permute(0, 3, 1, 2))
