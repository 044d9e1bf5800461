from .checked_coco import CheckedCocoDataset, check_box, read_coco_file
from .checked_loading import CheckedLoadImageFromFile, to_three_channels
from .coco_summary import SplitSummary, compare_classes, summarize_split
from .errors import AnnotationFileError, DatasetError, ImageFileError
from .layout import DataLayout, Split, find_layout
from .synthetic import generate_split, generate_synthetic_coco

__all__ = ['generate_split', 'generate_synthetic_coco',
           'CheckedCocoDataset', 'read_coco_file', 'check_box', 'SplitSummary',
           'compare_classes', 'summarize_split', 'DataLayout', 'Split', 'find_layout',
           'CheckedLoadImageFromFile', 'to_three_channels', 'AnnotationFileError',
           'DatasetError', 'ImageFileError']
