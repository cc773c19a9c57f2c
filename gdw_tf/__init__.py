"""gdw_tf: Generalized Data Weighting (Chen et al., NeurIPS 2021) for Keras 3 / TensorFlow."""

from gdw_tf.label_issues import find_label_issues
from gdw_tf.label_issues import rank_label_issues
from gdw_tf.model import GDWModel
from gdw_tf.model import build_weight_net
from gdw_tf.optimizers import TorchAdam

__all__ = ["GDWModel", "TorchAdam", "build_weight_net", "find_label_issues", "rank_label_issues"]
__version__ = "0.1.0"
