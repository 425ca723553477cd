"""The functions behind the CLI verbs (layer 4), one module per verb on one shared skeleton."""
from .core import (cache_reps, demo, draw_reps, encode_images, export_run, load_encoder, load_pixel, load_rdm,
                   load_reps, load_tokenizer, rep_fd, rep_fd_check, run_eval, sample_reps, setup_torch, train_encoder, train_pixel,
                   train_rdm, train_tokenizer)
from .fit import fit_folder

__all__ = ["cache_reps", "demo", "fit_folder", "rep_fd", "run_eval", "sample_reps", "train_encoder", "train_pixel",
           "train_rdm", "train_tokenizer"]
