"""The seeded global batch streams shared by the input pipelines: the same global batches on any process count."""

from collections.abc import Iterator

import grain
import numpy as np
from absl import flags

from suite.common.errors import UserError


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise UserError(f'global batch size {global_batch_size} is not divisible by the {process_count} processes')
  return global_batch_size // process_count


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Batches in one eval pass, the last one padded; the same on every process."""
  return -(-num_examples // global_batch_size)


def global_train_examples(source, preprocess, *, global_batch_size: int, seed: int, process_index: int,
                          process_count: int, start_batch: int) -> grain.MapDataset:
  """This process's examples of the seeded global training stream from global batch `start_batch` on, each made by
  `preprocess(example, rng)`: the one home of the stream's order and augmentation seeds (see global_train_stream)."""
  local_batch_size(global_batch_size, process_count)
  if len(source) < global_batch_size:
    raise UserError(f'the training split has {len(source)} examples, fewer than one global batch '
                    f'({global_batch_size}): lower --config.global_batch_size')
  shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  # Every example once per epoch, each epoch a fresh permutation (grain reseeds the shuffle per repetition). When
  # the batch does not divide the split, the batch at an epoch's end is "mixed": it ends with the first examples
  # of the next epoch (one of the options the MLPerf training rules allow; the runner evaluates an epoch only
  # after its mixed batch, as they require: see `Workload.epoch_end_step`).
  ds = grain.MapDataset.source(source).shuffle(seed=int(shuffle_seed)).repeat()
  # Augment before sharding: an example's crop and flip depend on its global stream position, not on the shard.
  ds = ds.random_map(preprocess, seed=int(augment_seed))
  return ds.slice(slice(start_batch * global_batch_size + process_index, None, process_count))


def global_train_stream(source, preprocess, *, global_batch_size: int, seed: int, process_index: int,
                        process_count: int, num_threads: int, start_batch: int, num_workers: int = 0) -> Iterator[dict]:
  """The endless, seeded training stream shared by the pipelines; `preprocess(example, rng)` augments one example.

  The global batch stream depends only on the seed: every process shuffles and augments the same global stream
  and takes positions process_index, process_index + process_count, ... of it, so the processes' batches k
  together form global batch k whatever the process count. The stream is indexable, so starting at batch
  `start_batch` costs nothing (no batch before it is read).

  The batches are also byte-identical whatever `num_threads` and `num_workers`: an example's augmentation is
  seeded by its stream position (grain's random_map), never by the thread or process that makes it.
  `num_workers` 0 makes the examples on `num_threads` threads of this process (enough on a small machine: PIL's
  decode and resize release the GIL); N > 0 makes whole local batches in N worker processes (grain's mp_prefetch,
  spawned: no GIL shared with the train loop), worker w making local batches w, w + N, ..., each on
  max(1, num_threads // N) threads, handed out in order. In worker mode a skipped bad record
  (skip_bad_records) is counted in the worker that read it, not in this process's count.
  """
  batch_size = local_batch_size(global_batch_size, process_count)
  ds = global_train_examples(source, preprocess, global_batch_size=global_batch_size, seed=seed,
                             process_index=process_index, process_count=process_count, start_batch=start_batch)
  if num_workers < 0:
    raise UserError(f'data_workers is {num_workers}: set --config.data_workers to 0 (threads only) or more')
  if not num_workers:
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
    return iter(ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=True))
  # Batch before the workers: mp_prefetch deals out the elements of the final MapDataset round robin (worker w
  # takes w, w + N, ...) and interleaves them back in order, so whole batches keep the stream independent of N.
  batches = ds.batch(batch_size, drop_remainder=True)
  threads = max(1, num_threads // num_workers)
  batches = batches.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
  if not flags.FLAGS.is_parsed():  # grain's mp_prefetch reads its absl flags: a caller that parsed none (a
    flags.FLAGS.mark_as_parsed()  # notebook, a test) gets their defaults rather than an error.
  return iter(batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2)))


def global_eval_positions(num_examples: int, *, global_batch_size: int, process_index: int,
                          process_count: int) -> grain.MapDataset:
  """This process's eval positions: the split padded to whole global batches, dealt out so each position lands on
  exactly one process (positions past the end are pads)."""
  num_positions = num_eval_batches(num_examples, global_batch_size) * global_batch_size
  return grain.MapDataset.range(num_positions).slice(slice(process_index, None, process_count))


def global_eval_stream(example_at, num_examples: int, *, global_batch_size: int, process_index: int,
                       process_count: int, num_threads: int) -> Iterator[dict]:
  """One in-order pass shared by the pipelines: `example_at(position)` makes the example (or a mask-0 pad past
  the end); positions are padded to whole global batches and dealt out so each lands on exactly one process."""
  batch_size = local_batch_size(global_batch_size, process_count)
  ds = global_eval_positions(num_examples, global_batch_size=global_batch_size, process_index=process_index,
                             process_count=process_count).map(example_at)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
  return iter(ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=True))
