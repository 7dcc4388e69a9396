"""Replica of the hub's MedMCQA test split for tests/fetch.rs, written with pyarrow as the hub's
datasets tooling writes its parquet files.

usage: hub_test_split.py VALIDATION_PARQUET OUT_PARQUET
The real `data/test-00000-of-00001.parquet` has 6,150 rows with the validation split's columns
and `cop` -1 on every row (the dataset's loading script computes `cop - 1` with a default of 0
for the unlabelled split). The questions here are the dev split's, repeated, under new ids (the
real test questions are not at hand).
"""
import sys

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 6150


def main(dev_path, out):
    dev = pq.read_table(dev_path)
    test = dev.take([i % dev.num_rows for i in range(ROWS)])
    test = test.set_column(test.schema.get_field_index("id"), "id", pa.array([f"test-{i:05}" for i in range(ROWS)]))
    test = test.set_column(test.schema.get_field_index("cop"), "cop", pa.array([-1] * ROWS, pa.int64()))
    pq.write_table(test, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
