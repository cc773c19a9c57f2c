"""gdw_tf: Generalized Data Weighting (Chen et al., NeurIPS 2021) for Keras 3 / TensorFlow."""

from gdw_tf.core.model import GDWModel
from gdw_tf.core.model import build_weight_net
from gdw_tf.core.optimizers import TorchAdam
from gdw_tf.labels.label_issues import find_label_issues
from gdw_tf.labels.label_issues import rank_label_issues

__all__ = ["GDWModel", "TorchAdam", "build_weight_net", "find_label_issues", "rank_label_issues"]
__version__ = "0.1.0"
