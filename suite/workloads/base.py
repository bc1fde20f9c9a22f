"""The workload contract: what a benchmark is (its MLPerf facts) and the hooks the runner and LoadGen call.

A workload class is the one home of every fact of its benchmark: the MLPerf name, ruleset and runs per score, the
target, the config fields the closed rules fix, the LoadGen model name and the inference reference accuracy, and
the hooks to train it (data, model, loss, optimizer) and to serve it (forward, response bytes, accuracy). A
workload module under `suite/workloads/` maps variant names to such classes (`VARIANTS`, default first); the
registry maps a workload name to the module. Nothing else in `suite/` knows a benchmark by name.
Everything here is pure JAX or host-side data; sharding and the clock live in the runner.
"""

import abc
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from mlperf_logging import benchmark_meta

from suite.common.config import leaf_keys
from suite.common.errors import UserError


class TrainState(NamedTuple):
  """The whole training state as a plain pytree (cheap to dispatch, easy to donate and checkpoint)."""
  step: jax.Array
  params: Any
  model_state: Any  # Non-trained variables, e.g. batch-norm statistics.
  opt_state: Any
  rng: jax.Array


class Workload(abc.ABC):
  """One benchmark (one variant of it). Subclasses set the class attributes and implement the hooks."""

  # --- the benchmark's facts ---
  benchmark: str  # MLPerf benchmark name, as `submission_benchmark` logs it.
  ruleset: str  # Compliance-checker ruleset for this benchmark's closed rules.
  variant: str = ''  # Name of this variant within its workload module (`--variant`).
  metric_name: str  # What `eval_accuracy` measures, e.g. 'top1'.
  dataset_description: str = ''  # What `full` trains on, for --list and docs.
  # Dotted config keys a closed-division run may change (the rules allow batch size and some optimizer
  # hyperparameters; run-time knobs that change no result are free too). Every other field is fixed by the rules.
  closed_free_fields: tuple[str, ...] = ()
  # False: the compliance checker has no rules for this benchmark (NCF), so its runs default to the open division and
  # `closed_violations` refuses a closed one.
  has_closed_rules: bool = True
  # MLPerf Inference: LoadGen's model name in mlperf.conf (None: the task has no LoadGen benchmark), and the FP32
  # reference accuracy whose `inference_closed_fraction` the closed division must reach.
  loadgen_model: str | None = None
  inference_reference_accuracy: float | None = None
  inference_closed_fraction: float = 0.99
  # The eval batch key that is one inference sample's input (what the QSL holds and `predict` takes); every other
  # key of an eval example (label, id, ...) is kept for scoring. `inference_group_by_index`: an Offline query's
  # samples are batched in QSL index order (translation's eval order sorts sentences by length, so a batch holds
  # sentences of similar length).
  inference_input_key: str = 'image'
  inference_group_by_index: bool = False
  # Responses are token ids (translation): suite.infer_bench also reports tokens/s (response values per second).
  inference_response_tokens: bool = False

  def __init__(self, config: ml_collections.ConfigDict, scale: str):
    self.config = config
    self.scale = scale

  @classmethod
  @abc.abstractmethod
  def get_config(cls, scale: str) -> ml_collections.ConfigDict:
    """The hyperparameters of one scale ('full': the MLPerf reference; 'tiny': generated data, CPU minutes)."""

  @classmethod
  def num_runs(cls) -> int:
    """Runs (distinct seeds) one MLPerf score needs: the package checker's result-file count."""
    return benchmark_meta.get_result_file_counts('training')[cls.benchmark]

  @classmethod
  def closed_fixed_fields(cls, config: ml_collections.ConfigDict) -> list[str]:
    """The leaf config keys a closed run must leave at the config's own values."""
    return [key for key in leaf_keys(config) if not _matches(key, cls.closed_free_fields)]

  @classmethod
  def closed_violations(cls, config: ml_collections.ConfigDict) -> list[str]:
    """Free fields whose value the closed rules still constrain (e.g. weight decay 0.0001 x 2^k); none by default."""
    del config
    return []

  @property
  def measures_quality(self) -> bool:
    """False when the eval cannot mean anything (synthetic data: the eval batch is the batch it trained on), so
    the run never reports success."""
    return True

  @property
  def inference_closed_bound(self) -> float | None:
    ref = self.inference_reference_accuracy
    return None if ref is None else self.inference_closed_fraction * ref

  @property
  def target(self) -> float:
    return self.config.target

  @property
  def global_batch_size(self) -> int:
    return self.config.global_batch_size

  # --- data (host side) ---
  @abc.abstractmethod
  def open_data(self, data_dir: str | None) -> None:
    """Opens (never reads) the train and eval splits; raises UserError if they are missing."""

  @property
  @abc.abstractmethod
  def num_train_examples(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def num_eval_examples(self) -> int:
    ...

  def skipped_train_records(self) -> list[int]:
    """Indices of the corrupt training records this process replaced so far (--config.skip_bad_records; eval
    records are never skipped)."""
    return []

  @abc.abstractmethod
  def train_batches(self, seed: int, process_index: int, process_count: int, start_step: int = 0) -> Iterator[dict]:
    """Infinite iterator of this process's share of each global train batch (numpy), from global batch
    `start_step` on (a resumed run continues the same stream)."""

  @abc.abstractmethod
  def eval_batches(self, process_index: int, process_count: int) -> Iterator[dict]:
    """One pass over the eval split, padded to fixed shapes, with a 'mask' entry."""

  @abc.abstractmethod
  def batch_shapes(self, global_batch_size: int, train: bool) -> dict:
    """Global shapes of one batch, as jax.ShapeDtypeStruct, for ahead-of-time compilation."""

  def train_batch_shapes(self, global_batch_size: int) -> list[dict]:
    """Every shape a train batch can take (the runner compiles one train executable per shape before run_start and
    picks one by each batch's shapes): one, `batch_shapes(global_batch_size, train=True)`, unless the workload
    batches by length (gnmt's `train_bucket_lengths`)."""
    return [self.batch_shapes(global_batch_size, train=True)]

  # --- model and optimisation (pure, jitted by the runner) ---
  @abc.abstractmethod
  def init_variables(self, rng: jax.Array) -> tuple[Any, Any]:
    """Returns (params, model_state)."""

  def load_pretrained(self, params, model_state) -> tuple[Any, Any]:
    """The initial (params, model_state) with the weights the reference starts from loaded (e.g. an ImageNet
    backbone from a file the config names); each replaced leaf keeps its dtype and sharding. The runner calls it
    after init, inside the init phase, and not for a resumed run. Default: nothing to load."""
    return params, model_state

  def reference_weights(self, arrays: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """(params, model_state) of this workload's model from the MLPerf Inference reference model's named weight
    arrays (an ONNX file's initializers, read by `python -m suite.convert_weights`), in the layout `init_variables`
    returns, so a converted checkpoint restores as a trained one. Raises UserError naming what is missing or
    mis-shaped. Default: no converter."""
    del arrays
    raise UserError(f'{self.benchmark} has no reference-weights converter')

  @abc.abstractmethod
  def loss(self, params, model_state, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[Any, dict]]:
    """Training loss; returns (loss, (new_model_state, metrics))."""

  @abc.abstractmethod
  def eval_outputs(self, params, model_state, batch: dict) -> Any:
    """Per-batch eval outputs (e.g. masked sums) that `eval_metric` reduces on the host."""

  @abc.abstractmethod
  def eval_metric(self, outputs: list) -> float:
    """Reduces the host copies of all eval batches' outputs to the quality metric."""

  @abc.abstractmethod
  def learning_rate_schedule(self, steps_per_epoch: float) -> optax.Schedule:
    ...

  @abc.abstractmethod
  def optimizer(self, schedule: optax.Schedule) -> optax.GradientTransformation:
    ...

  def make_train_step(self, tx: optax.GradientTransformation, schedule: optax.Schedule):
    """The workload's own train step `(state, batch) -> (state, metrics)`, for an update that the default step
    (value_and_grad of `loss`, then `tx.update`) cannot express, e.g. sparse embedding-row updates that never
    materialise a table-sized gradient. None: the runner uses suite.training.steps.make_train_step."""
    del tx, schedule
    return None

  @abc.abstractmethod
  def hyperparameters(self, steps_per_epoch: float) -> dict:
    """mllog key -> value of every hyperparameter the closed ruleset checks (besides the common ones)."""

  def model_flops_per_example(self) -> float | None:
    """Analytic training FLOPs of one example, for model-FLOPs utilisation (MLPerf / MaxText convention: 3 x the
    forward's 2 x MACs of its convolutions and dense layers; models/flops.py counts them from layer shapes).
    None: no analytic count, and the summary's `model_flops_utilization` is null."""
    return None

  def init_log_events(self, params) -> list[tuple[str, object, dict]]:
    """(key, value, metadata) events a ruleset wants logged at init, e.g. weights_initialization; none by default."""
    del params
    return []

  # --- cadence ---
  @property
  def steps_per_epoch(self) -> float:
    """Global steps an epoch (the learning-rate schedule's and the logs' unit): examples / global batch, unless
    the workload's batches do not all hold global_batch_size examples (length buckets with a partial last batch)."""
    return self.num_train_examples / self.global_batch_size

  def epoch_end_step(self, epoch: int) -> int:
    """The global step after which `epoch` epochs are trained. The train stream is every example once per epoch
    with batches crossing epoch boundaries, so this is the step whose ("mixed") batch holds the epoch's last
    example: the MLPerf rules let the last batch of an epoch be mixed with the next epoch's first samples if the
    epoch is evaluated after it."""
    return -(-epoch * self.num_train_examples // self.global_batch_size)

  def epochs_done(self, step: int) -> int:
    """Whole epochs trained after `step` global steps (the inverse of `epoch_end_step`)."""
    return step * self.global_batch_size // self.num_train_examples

  @property
  def eval_every_epochs(self) -> int:
    return self.config.eval_every_epochs

  @property
  def max_epochs(self) -> int:
    return self.config.max_epochs

  def reached_target(self, metric: float) -> bool:
    return metric >= self.target

  def eval_metadata(self, epoch: int, step: int) -> dict:
    """The metadata that places an eval in the run, on eval_start/eval_stop/eval_accuracy. An "epoch" here is the
    runner's eval-cadence unit: a workload whose rules evaluate at a fraction of an epoch (DLRM: every 0.05) or
    every N samples (LLMs) overrides `epoch_end_step` / `epochs_done` and logs its own position here."""
    del step
    return {'epoch_num': epoch}

  # --- inference (LoadGen) ---
  def predict(self, params, model_state, images) -> Any:
    """(params, model_state, inputs) -> the device values one batch of responses is made of (jitted); `inputs`
    is a batch of the eval key `inference_input_key`."""
    raise NotImplementedError(f'{self.benchmark} ({self.variant}) has no inference path')

  def encode_responses(self, host_outputs: Any, n: int) -> list[np.ndarray]:
    """Host outputs of one (padded) batch -> the first `n` samples' response arrays (their bytes go to LoadGen)."""
    raise NotImplementedError(f'{self.benchmark} ({self.variant}) has no inference path')

  def decode_response(self, data: bytes) -> np.ndarray:
    """Inverse of `encode_responses` for one sample; an empty response (a failed sample) means no prediction."""
    raise NotImplementedError(f'{self.benchmark} ({self.variant}) has no inference path')

  def score_responses(self, responses: dict[int, bytes], eval_samples: list[dict]) -> float:
    """The quality metric of LoadGen's logged responses (qsl index -> bytes) over the whole eval split, whose
    samples' non-image fields (label, image id, ...) are `eval_samples`; an unanswered sample counts as wrong."""
    raise NotImplementedError(f'{self.benchmark} ({self.variant}) has no inference path')


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
  """A pattern names a leaf ('optimizer.learning_rate') or a whole group ('optimizer')."""
  return any(key == p or key.startswith(p + '.') for p in patterns)
