"""The SuTI apprentice: training on G(lambda), the MLflow registry and Dream-SuTI, one
concern per module (the inference pipeline itself is :mod:`suti.models.pipeline`):

    rows      what it learns from: G(lambda) or the raw clusters (Re-Imagen); the run recipe
    settings  training settings, architecture and sampling defaults from the config
    data      G batches (demos, texts, prompt, target)
    module    the Lightning module and callbacks
    training  fit and resume, export, multi-device subprocess, Dream-SuTI
    registry  the pyfunc, registration, and one resolver for models:/, runs:/, folders, store runs
    files     local cache folders and folder copies to and from the store
    valcheck  a few val subjects scored after training (identity, overall, gap closed, a grid)

Plain functions and classes; the Prefect flows (`flows/train.py`, `flows/generate.py`,
`flows/dreamsuti.py`) only wire them. Written once for every backbone
(:mod:`suti.models.backbone`): the tiny pixel-space world model and Stable Diffusion.

Training data G(lambda) are the filter stage's rows (``filter/deltas.jsonl``)::

    {"sample_key": <store key of the expert sample y_s>, "prompt": p_s, "delta": float,
     "cluster_id": ..., "demo_keys": [store keys of C_s], "demo_texts": [...], "description": ...}

Store layout of one training run ``<run>`` (``lam-0.02``, ``dreamsuti-<name>``, ...)::

    apprentice/<run>/last.ckpt    Lightning checkpoint, rewritten atomically every N steps
    apprentice/<run>/last.json    {"step": N, ...} of that checkpoint
    apprentice/<run>/model/       the exported model: apprentice.pt + backbone/ (what the
                                  pyfunc carries; `suti generate --model <run>` loads it)
    apprentice/<run>/samples.png  sample grid: demos | generated, one row per example
    apprentice/<run>/_DONE.json   written last: steps, loss, parameter overhead, ...

MLflow metrics (per step): ``apprentice.loss``, ``apprentice.steps_per_sec``,
``apprentice.lr``, ``apprentice.gate_abs_mean``; at the end ``apprentice.params_base``,
``apprentice.params_added``, ``apprentice.params_ratio``, ``apprentice.final_loss``.
"""
from __future__ import annotations

from suti.models.pipeline import FORMAT, MODEL_FILE, Apprentice, default_device
from suti.tasks.apprentice.data import GBatches, GDataModule, ImageSource
from suti.tasks.apprentice.files import cache_dir, download_prefix, upload_dir
from suti.tasks.apprentice.module import METRIC_PREFIX, ApprenticeLit, MlflowMetrics, StepTimer, StoreCheckpoint
from suti.tasks.apprentice.registry import (ApprenticePyfunc, check_source, input_example, load_apprentice,
                                            log_pyfunc, model_signature, pip_requirements, register_candidate,
                                            resolve)
from suti.tasks.apprentice.rows import (SOURCES, cluster_rows, load_G, rows_digest, run_name_for, train_recipe,
                                        training_rows)
from suti.tasks.apprentice.settings import TrainSettings, apprentice_config, sampling_defaults
from suti.tasks.apprentice.training import (dreamsuti, fit_apprentice, needs_subprocess, sample_grid,
                                            train_apprentice, train_in_subprocess)

__all__ = ["FORMAT", "MODEL_FILE", "Apprentice", "default_device", "GBatches", "GDataModule", "ImageSource",
           "cache_dir", "download_prefix", "upload_dir", "METRIC_PREFIX", "ApprenticeLit", "MlflowMetrics",
           "StepTimer", "StoreCheckpoint", "ApprenticePyfunc", "check_source", "input_example", "load_apprentice",
           "log_pyfunc", "model_signature", "pip_requirements", "register_candidate", "resolve", "SOURCES",
           "cluster_rows", "load_G", "rows_digest", "run_name_for", "train_recipe", "training_rows",
           "TrainSettings", "apprentice_config", "sampling_defaults", "dreamsuti", "fit_apprentice",
           "needs_subprocess", "sample_grid", "train_apprentice", "train_in_subprocess"]
