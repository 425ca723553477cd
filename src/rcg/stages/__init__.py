"""The functions behind the CLI verbs (layer 4): one module per verb, every training verb on the skeleton of
:mod:`rcg.stages.common`.

    encoder    train-encoder          tokenizer  train-tokenizer      eval     eval
    reps       cache-reps, sample-reps, rep-fd  pixel  train-pixel    evalnet  train-evalnet
    rdm        train-rdm              sample     sample, interpolate  fit      fit
    demo       demo                   plot       plot                 prepare  prepare-data
"""
from .demo import demo, export_run
from .encoder import train_encoder
from .eval import run_eval
from .evalnet import train_evalnet
from .fit import fit_folder
from .pixel import train_pixel
from .rdm import rep_fd_check, train_rdm
from .reps import cache_reps, rep_fd, sample_reps
from .plot import plot_run
from .prepare import prepare_data
from .sample import interpolate_command, load_sampler, sample_command
from .tokenizer import train_tokenizer

__all__ = ["cache_reps", "demo", "export_run", "fit_folder", "interpolate_command", "load_sampler", "plot_run",
           "prepare_data", "rep_fd", "rep_fd_check", "run_eval", "sample_command", "sample_reps", "train_encoder", "train_evalnet",
           "train_pixel", "train_rdm", "train_tokenizer"]
