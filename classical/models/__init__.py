"""What is fitted on the embeddings: the model zoo with its grids, the Dense head, the fine-tuning network.

Importing it imports no TensorFlow: the Dense head and the network build Keras models when used.
"""

from classical.models.dense import DenseHead
from classical.models.zoo import MODEL_NAMES, ZOO, load_grids

__all__ = ["MODEL_NAMES", "ZOO", "DenseHead", "load_grids"]
