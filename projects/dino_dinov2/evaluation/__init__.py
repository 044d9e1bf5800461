from .per_class_coco_metric import PerClassCocoMetric, per_class_rows, per_class_table

__all__ = ['PerClassCocoMetric', 'per_class_rows', 'per_class_table']
