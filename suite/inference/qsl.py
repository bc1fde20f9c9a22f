"""LoadGen's query sample library: the workload's preprocessed eval samples, held in memory by index."""

from collections.abc import Callable, Iterator

import numpy as np

from suite.workloads.base import Workload


def eval_samples(batches: Iterator[dict]) -> Iterator[tuple[int, dict]]:
  """(sample index, example) over the real (mask 1) examples of padded eval batches, in eval order."""
  index = 0
  for batch in batches:
    for row in np.flatnonzero(np.asarray(batch['mask']) > 0):
      yield index, {k: np.asarray(v[row]) for k, v in batch.items()}
      index += 1


def eval_metadata(workload: Workload) -> list[dict]:
  """Every eval sample's fields but its input (label, image id and size, sentence index), for scoring by index."""
  return [{k: v for k, v in example.items() if k not in (workload.inference_input_key, 'mask')}
          for _, example in eval_samples(workload.eval_batches(process_index=0, process_count=1))]


class SampleLibrary:
  """Loads the samples (images, sentences) LoadGen asks for (its performance set) and drops them when told to.

  Samples come from the same pipeline as training's eval (`workload.eval_batches`), so inference sees exactly
  the preprocessed inputs the eval accuracy was measured on. A load reads the split once and keeps only the
  requested indices, so memory follows the performance sample count, not the dataset size.
  """

  def __init__(self, batches_fn: Callable[[], Iterator[dict]], total_count: int, performance_count: int,
               key: str = 'image'):
    self._batches_fn = batches_fn
    self.key = key  # The eval batch key a sample's input is (the workload's `inference_input_key`).
    self.total_count = total_count
    self.performance_count = min(performance_count, total_count)
    self.images: dict[int, np.ndarray] = {}

  @classmethod
  def for_workload(cls, workload: Workload, performance_count: int) -> 'SampleLibrary':
    return cls(lambda: workload.eval_batches(process_index=0, process_count=1), workload.num_eval_examples,
               performance_count, workload.inference_input_key)

  def load(self, indices: list[int]) -> None:
    wanted = set(indices) - set(self.images)
    if not wanted:
      return
    for index, example in eval_samples(self._batches_fn()):
      if index in wanted:
        self.images[index] = example[self.key]
        wanted.discard(index)
        if not wanted:
          break
    if wanted:
      raise IndexError(f'{len(wanted)} sample indices are past the eval split (first: {min(wanted)})')

  def unload(self, indices: list[int]) -> None:
    for index in indices:
      self.images.pop(index, None)

  def gather(self, indices: list[int]) -> np.ndarray:
    """One host batch of the given samples (they must be loaded)."""
    return np.stack([self.images[i] for i in indices])

  def construct(self):
    """The LoadGen handle; destroy it with lg.DestroyQSL."""
    import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
    return lg.ConstructQSL(self.total_count, self.performance_count, self.load, self.unload)


class PinnedLibrary:
  """A library's view whose samples stay loaded when LoadGen unloads them: the calibration probe and the Server
  search's trials run on the samples the test itself then uses, read from the eval split once."""

  def __init__(self, library: SampleLibrary):
    self.library = library

  def gather(self, indices: list[int]) -> np.ndarray:
    return self.library.gather(indices)

  def construct(self):
    """The LoadGen handle; destroy it with lg.DestroyQSL."""
    import mlperf_loadgen as lg  # pylint: disable=import-outside-toplevel
    return lg.ConstructQSL(self.library.total_count, self.library.performance_count, self.library.load,
                           lambda indices: None)
