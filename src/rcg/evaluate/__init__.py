"""Evaluation: features, statistics and metrics of uint8 (B, C, H, W) image streams (layer 3).

- :mod:`.metrics`: kNN accuracy, Fréchet distances and the representation-FD floors, FID, IS, precision/recall
- :mod:`.features`: the :class:`FeatureNet` interface (:class:`InceptionV3`, :class:`EvalNet`), streaming stats
- :mod:`.sources`: batches from tensors, image folders and npz / npy files
- :mod:`.stream`: reference statistics and :func:`evaluate_stream`, which scores a stream in one pass
"""
from .features import (DEFAULT_MAX_KEEP, INCEPTION_FILE, EvalNet, FeatureNet, InceptionV3, StreamingStats,
                       check_images)
from .metrics import (MIN_SPLIT_ROWS, SUBSETS_MIN_RATIO, EvalError, fd_between, feature_stats, fid_from_stats,
                      frechet_distance, image_halves, inception_score, knn_accuracy, precision_recall,
                      rep_adherence, rep_fd_plan, split_fd_floor, subset_fd_floor)
from .sources import (ImageFolderSource, NpzSource, TensorSource, iterate_image_folder, iterate_npz,
                      iterate_tensor)
from .stream import (REFERENCE_KIND, Reference, evaluate_stream, load_reference, reference_from_features,
                     reference_from_stats, reference_stats)
