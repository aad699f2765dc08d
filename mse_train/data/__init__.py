"""Stage 2, the data: CSV (also .csv.gz) and Parquet files in, checked float32 arrays and
fitted preprocessing out, through a binary cache of parsed tables.

  table.py       read a table's columns (fast pandas path; exact messages on trouble), in
                 one piece (`read`) or in chunks (`read_chunks`, for predict); chooses
                 CSV or Parquet by the file's extension
  csvscan.py     the slow, exact pass that names the line and column of a problem; opens
                 .gz files through gzip
  parquet.py     Parquet files through pyarrow (an optional extra): only the needed
                 columns, typed by the CSV rules, problems named by row and row group
  ingest.py      a table read through the data cache: from it when it holds the table,
                 else parsed in chunks into it (falling back on table.py's exact reader)
  cache.py       the data cache: per-column files keyed by the file's sha256 and the
                 parse settings, checked on every read, published by atomic rename; its
                 `Entry` is the one column form (float32 numbers, category codes + vocabulary)
  digest.py      the file's sha256, in a background thread
  missing.py     the `data.missing` policy for empty cells, over rows in column form
  weights.py     the sample weights column (`data.weight`): checked where it is read
  preprocess.py  what is learned (standardisation, fill values, category vocabularies for
                 one-hot columns or embedding codes), stored in checkpoints, and the one
                 transform (`Encoder`) from rows in column form to model inputs
  fitting.py     the one fitter: that preprocessing and the drift profile from the training
                 rows in column form, a block at a time (one block in memory; float64
                 moments merged by Chan's formula, exact medians, vocabularies from codes)
  stored.py      that preprocessing read back from a checkpoint, checked key by key
  frames.py      a DataFrame (or array) from the Python API -> the table file the readers
                 read, so a frame is parsed by the same rules; messages name the frame
  files.py       only regular files are input: a FIFO or device is named, never opened
  prepare.py     config -> train/validation splits ready for the loop; eval's reading;
                 one fold's split (`fit_split`) for cross-validation; the holdout draw
                 and the held-out category check that streamed tables share
  folds.py       K-fold row numbers, shuffled with the seed
  bags.py        a bagged run's rows (`train.bags`): one preprocessing fitted on every
                 training row, and each bag's own draw of validation rows
  stream.py      rows of a memory-mapped cache entry in blocks: shuffled epochs of batches
                 and scoring, through preprocess.py's Encoder, for tables larger than memory
  stream_fit.py  `run`'s and `eval`'s data: in memory when it fits `data.memory_budget`,
                 else streamed (empty cells, the validation split, the checks, block by block)
  drift.py       what the training rows held (range, empty cells), and how new rows
                 differ from it beyond chance, for eval/predict warnings

Imports only config/ (for `DataConfig`), errors and runtime.
"""
