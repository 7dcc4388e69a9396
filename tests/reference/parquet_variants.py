"""Replicas of MedMCQA parquet files as pandas and other tools write them, for tests/prep.rs.

usage: parquet_variants.py HUB_VALIDATION_PARQUET DEV_JSON OUT_DIR
Writes, from the hub's validation file (its columns: id, question, opa-opd, cop as int64; zstd
pages) and the official dev.json's other columns in the same order, with pyarrow (what pandas'
`to_parquet` calls):
- int8.parquet: `cop` downcast to int8 (pandas' `pd.to_numeric(downcast="integer")`, common
  after `astype`), `subject_name` and `choice_type` as categories (pandas' `category` dtype is
  written dictionary-encoded with the dictionary type in the schema), an unused small-integer
  column, zstd pages;
- uint8.parquet: `cop` as uint8, `exp` a column of nulls only (pandas' all-None object column),
  an unused float column, gzip pages in two row groups;
- codecs-*.parquet: the hub's columns with every other compression codec pandas offers.
"""
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def replace(table, name, array):
    return table.set_column(table.schema.get_field_index(name), name, array)


def main(hub, dev_json, out):
    out = Path(out)
    base = pq.read_table(hub)
    n = base.num_rows
    dev = [json.loads(line) for line in open(dev_json, encoding="utf-8")]
    assert [r["id"] for r in dev] == base["id"].to_pylist(), "dev.json and the parquet differ in order"
    for name in ("choice_type", "exp", "subject_name", "topic_name"):
        base = base.append_column(name, pa.array([r.get(name) for r in dev], pa.string()))

    t = replace(base, "cop", base["cop"].cast(pa.int8()))
    for name in ("subject_name", "choice_type"):
        t = replace(t, name, pa.compute.dictionary_encode(t[name]))
    t = t.append_column("difficulty", pa.array([i % 3 for i in range(n)], pa.int8()))
    pq.write_table(t, out / "int8.parquet", compression="zstd")

    t = replace(base, "cop", base["cop"].cast(pa.uint8()))
    t = replace(t, "exp", pa.nulls(n))
    t = t.append_column("score", pa.array([i / 7 for i in range(n)], pa.float64()))
    pq.write_table(t, out / "uint8.parquet", compression="gzip", row_group_size=n // 2 + 1)

    for codec in ("snappy", "brotli", "lz4", "none"):
        pq.write_table(base, out / f"codecs-{codec}.parquet", compression=codec)


if __name__ == "__main__":
    main(*sys.argv[1:])
