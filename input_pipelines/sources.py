"""Opening a TFDS split for the input pipelines: the data folder, the `tfds build` hint, the checked source."""

import os
from typing import Any

import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants

from input_pipelines import checked_source
from suite.common.errors import UserError, first_line


def resolve_data_dir(data_dir: str | None) -> str:
  """--data_dir, else $TFDS_DATA_DIR, else TFDS's own default (~/tensorflow_datasets)."""
  return os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def open_split(dataset: str, split: str, data_dir: str | None, skip_bad_records: bool = False, *,
               is_eval: bool = False) -> Any:
  """A random-access source (len, [i]) over one split; images stay encoded bytes, labels are ints.

  Raises UserError with the `tfds build` command when the dataset or split is not prepared in data_dir. A corrupt
  record raises CorruptRecordError naming its file when read (or, with skip_bad_records, is replaced and counted:
  training splits only; an `is_eval` split is always read whole, so skip_bad_records must be False there).
  """
  builder = prepared_builder(dataset, data_dir, split)
  try:
    # Skip decoding so that we decode with PIL ourselves (JPEG draft mode: decode big images at reduced size).
    source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  except Exception as e:  # Unknown split (ValueError), TFRecord-only files (NotImplementedError), ...
    raise UserError(f'dataset {dataset!r} (split {split!r}) in {_where(data_dir)} cannot be read ({first_line(e)}): '
                    f'{_fix(dataset, data_dir)}') from None
  return checked_source.CheckedSource(source, dataset, split, data_dir, skip_bad_records, is_eval=is_eval)


def dataset_info(dataset: str, data_dir: str | None) -> tfds.core.DatasetInfo:
  """The metadata of a prepared dataset (features, splits), read from its files; UserError as open_split's."""
  return prepared_builder(dataset, data_dir).info


def prepared_builder(dataset: str, data_dir: str | None, split: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of a dataset prepared in data_dir, else UserError with the `tfds build` command."""
  missing = (f"dataset {dataset!r}{f' (split {split!r})' if split else ''} not found in {_where(data_dir)}: "
             f'{_fix(dataset, data_dir)}')
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except Exception:  # tfds raises DatasetNotFoundError, ValueError or ImportError for unknown names/configs.
    raise UserError(missing) from None
  # Check first: asking tfds for a data source of an unprepared dataset would start preparing (downloading) it.
  if not builder.is_prepared():
    raise UserError(missing)
  return builder


def _where(data_dir: str | None) -> str:
  return data_dir or os.environ.get('TFDS_DATA_DIR') or tfds_constants.DATA_DIR


def _fix(dataset: str, data_dir: str | None) -> str:
  return (f'prepare it with `tfds build {dataset} --data_dir={_where(data_dir)} --file_format=array_record` '
          '(see BUILD.md)')
