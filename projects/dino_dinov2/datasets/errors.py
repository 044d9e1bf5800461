"""Errors for input data that cannot be used as given (the user must fix the data).

Each message is one line that names the file or folder at fault and the problem; the
tools print it as ``error: <message>`` (see ``cli/error_exit.py``).
"""


from ..errors import UserError


class DatasetError(UserError, ValueError):
    """A data root, annotation file or image that cannot be used."""


class AnnotationFileError(DatasetError):
    """A COCO annotation file that is missing, not JSON, or not in the COCO schema."""


class ImageFileError(DatasetError):
    """An image file that is missing or cannot be decoded."""
