"""What a benchmark is (target, ruleset, cadence, hyperparameters) and the hooks the runner calls to train it.

A workload module defines `get_config(scale, variant) -> ConfigDict` and a `Workload` subclass; the runner knows nothing
else about it. Everything here is pure JAX or host-side data; sharding and the clock live in the runner.
"""

import abc
from typing import Any, Iterator, NamedTuple

import jax
import ml_collections
import optax


class TrainState(NamedTuple):
  """The whole training state as a plain pytree (cheap to dispatch, easy to donate and checkpoint)."""
  step: jax.Array
  params: Any
  model_state: Any  # Non-trained variables, e.g. batch-norm statistics.
  opt_state: Any
  rng: jax.Array


class Workload(abc.ABC):
  """One benchmark. Subclasses set the class attributes and implement the hooks."""

  benchmark: str  # MLPerf benchmark name, as `submission_benchmark` logs it.
  ruleset: str  # Compliance-checker ruleset for this benchmark's closed rules.
  metric_name: str  # What `eval_accuracy` measures, e.g. 'top1'.

  def __init__(self, config: ml_collections.ConfigDict, scale: str):
    self.config = config
    self.scale = scale

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

  # --- model and optimisation (pure, jitted by the runner) ---
  @abc.abstractmethod
  def init_variables(self, rng: jax.Array) -> tuple[Any, Any]:
    """Returns (params, model_state)."""

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

  @abc.abstractmethod
  def hyperparameters(self, steps_per_epoch: float) -> dict:
    """mllog key -> value of every hyperparameter the closed ruleset checks (besides the common ones)."""

  def init_log_events(self, params) -> list[tuple[str, object, dict]]:
    """(key, value, metadata) events a ruleset wants logged at init, e.g. weights_initialization; none by default."""
    del params
    return []

  # --- cadence ---
  @property
  def eval_every_epochs(self) -> int:
    return self.config.eval_every_epochs

  @property
  def max_epochs(self) -> int:
    return self.config.max_epochs

  def reached_target(self, metric: float) -> bool:
    return metric >= self.target
