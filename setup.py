"""Distribution ``dino-dinov2``, importable as ``projects.dino_dinov2``.

Install with ``tools/install.sh`` (or ``make install``): it sets up torch and compiles
mmcv first, which plain ``pip install`` cannot do in the right order.
"""
from setuptools import find_namespace_packages, setup


def read_requirements(path):
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


setup(
    name='dino-dinov2',
    version='0.1.0',
    description='DINO (DETR with improved denoising anchor boxes) on DINOv2 ViT backbones, '
                'as an MMDetection 3.x plugin',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_namespace_packages(include=['projects.dino_dinov2', 'projects.dino_dinov2.*']),
    # the fused OpenVINO operation's source, compiled on first use (deploy/openvino_ext.py)
    package_data={'projects.dino_dinov2.deploy': ['openvino_ext/*.cpp']},
    install_requires=read_requirements('requirements/runtime.txt'),
    extras_require={'tests': read_requirements('requirements/tests.txt'),
                    'deploy': read_requirements('requirements/deploy.txt'),
                    'openvino': read_requirements('requirements/openvino.txt')},
    license='Apache-2.0',
)
