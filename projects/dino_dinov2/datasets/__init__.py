from .checked_coco import CheckedCocoDataset, read_coco_file
from .checked_loading import CheckedLoadImageFromFile, to_three_channels
from .errors import AnnotationFileError, DatasetError, ImageFileError
from .synthetic import generate_split, generate_synthetic_coco, synthetic_classes

__all__ = ['generate_split', 'generate_synthetic_coco', 'synthetic_classes',
           'CheckedCocoDataset', 'read_coco_file', 'CheckedLoadImageFromFile',
           'to_three_channels', 'AnnotationFileError', 'DatasetError', 'ImageFileError']
