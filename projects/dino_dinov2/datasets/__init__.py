from .synthetic import generate_split, generate_synthetic_coco, synthetic_classes

__all__ = ['generate_split', 'generate_synthetic_coco', 'synthetic_classes']
