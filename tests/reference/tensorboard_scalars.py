"""Reads a TensorBoard log directory as TensorBoard does (its EventAccumulator, which checks
each record's CRC-32C and drops the steps a restart redoes) and writes
{"files": n, "scalars": {tag: [[step, value], ...]}} as JSON to argv[2]."""
import json
import pathlib
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

logdir, out = pathlib.Path(sys.argv[1]), sys.argv[2]
files = sorted(logdir.glob("events.out.tfevents.*"))
for path in files:
    # Every record of every file is whole and its checksums hold (a DataLossError otherwise).
    reader = PyRecordReader_New(str(path))
    try:
        while True:
            reader.GetNext()
    except Exception as e:  # the reader ends a file with OutOfRangeError
        if type(e).__name__ != "OutOfRangeError":
            raise
acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
acc.Reload()
scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
json.dump({"files": len(files), "scalars": scalars}, open(out, "w"))
