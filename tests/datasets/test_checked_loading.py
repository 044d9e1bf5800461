"""Image files: missing / corrupt -> one-line error naming the file (or a logged skip);
grayscale, palette, 16-bit and RGBA -> 3-channel 8-bit images."""

import numpy as np
import pytest
from PIL import Image

from helpers import captured_log, names
from projects.dino_dinov2.datasets import CheckedLoadImageFromFile, ImageFileError


def _load(path, **kwargs):
    return CheckedLoadImageFromFile(**kwargs).transform({'img_path': str(path)})


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    files = {
        'rgb.png': Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)),
        'gray.png': Image.fromarray(gray, 'L'),
        'gray16.png': Image.fromarray(gray.astype(np.uint16) * 200),
        'palette.png': Image.fromarray(gray, 'L').convert('P'),
        'rgba.png': Image.fromarray(rng.integers(0, 255, (20, 30, 4), dtype=np.uint8),
                                    'RGBA'),
        'photo.jpg': Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)),
    }
    for name, img in files.items():
        img.save(root / name)
    data = (root / 'photo.jpg').read_bytes()
    (root / 'truncated.jpg').write_bytes(data[:len(data) // 2])
    (root / 'not_an_image.jpg').write_text('hello')
    (root / 'empty.png').write_bytes(b'')
    return root


@pytest.mark.parametrize('name', ['gray.png', 'gray16.png', 'palette.png', 'rgba.png',
                                  'rgb.png', 'photo.jpg'])
@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
def test_every_mode_becomes_three_channel_uint8(images, name, backend):
    out = _load(images / name, imdecode_backend=backend)
    assert out['img'].shape == (20, 30, 3) and out['img'].dtype == np.uint8
    assert out['img_shape'] == out['ori_shape'] == (20, 30)


def test_grayscale_is_the_gray_value_in_every_channel(images):
    gray = np.asarray(Image.open(images / 'gray.png'))
    out = _load(images / 'gray.png')['img']
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@pytest.mark.parametrize('color_type', ['unchanged', 'grayscale'])
def test_other_color_types_are_made_three_channel(images, color_type):
    """mmcv's own decoder gives 4 or 1 channels here; the detector needs 3."""
    for name in ('rgba.png', 'gray.png'):
        out = _load(images / name, color_type=color_type)['img']
        assert out.shape == (20, 30, 3), (name, color_type)
    rgba = np.asarray(Image.open(images / 'rgba.png'))
    bgr = _load(images / 'rgba.png', color_type='unchanged')['img']
    np.testing.assert_array_equal(bgr[:, :, ::-1], rgba[:, :, :3])  # alpha dropped


def test_missing_image_names_the_file(images):
    with pytest.raises(ImageFileError) as e:
        _load(images / 'nope.jpg')
    assert names(str(e.value), images / 'nope.jpg', 'not found')


@pytest.mark.parametrize('name', ['truncated.jpg', 'not_an_image.jpg', 'empty.png'])
@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
def test_corrupt_image_names_the_file(images, name, backend):
    with pytest.raises(ImageFileError) as e:
        _load(images / name, imdecode_backend=backend)
    msg = str(e.value)
    problem = ('image file is empty (0 bytes)' if name == 'empty.png' else
               'cannot decode the image (corrupt, truncated or not an image')
    assert msg.startswith(f'{images / name}: {problem}')
    assert '\n' not in msg


def test_skip_bad_returns_none_and_warns_once_per_file(images):
    transform = CheckedLoadImageFromFile(skip_bad=True)
    with captured_log() as log:
        for _ in range(3):
            assert transform.transform({'img_path': str(images / 'nope.jpg')}) is None
            assert transform.transform({'img_path': str(images / 'truncated.jpg')}) is None
        assert transform.transform({'img_path': str(images / 'rgb.png')})['img'].shape == (
            20, 30, 3)
    skipped = [m for m in log if m.startswith('skipping image')]
    assert skipped == [
        f'skipping image {images / "nope.jpg"}: image file not found (skip_bad=True)',
        f'skipping image {images / "truncated.jpg"}: cannot decode the image (corrupt, '
        'truncated or not an image) (skip_bad=True)']


def test_mmcv_ignore_empty_means_skip_bad(images):
    """mmcv's flag skipped missing files silently and still failed on corrupt ones."""
    transform = CheckedLoadImageFromFile(ignore_empty=True)
    assert transform.skip_bad
    assert transform.transform({'img_path': str(images / 'not_an_image.jpg')}) is None
