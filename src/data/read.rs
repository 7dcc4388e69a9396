//! Readers for the three MedMCQA layouts. JSON Lines is parsed line by line (so every error
//! has its line number); parquet and CSV are read with polars and checked column by column.

use super::{RawFile, Record, OPTION_FIELDS};
use crate::error::{Error, Loc, Result};
use polars::prelude::*;
use serde_json::{Map, Value};
use std::path::Path;

/// The file layouts `prep` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The official release: one JSON object a line, `cop` 1-based.
    Jsonl,
    /// The Hugging Face hub's parquet files, `cop` 0-based.
    Parquet,
    /// CSV with a header row and the same columns, `cop` 1-based.
    Csv,
}

impl Format {
    /// From the file extension: .json/.jsonl, .parquet, .csv.
    pub fn detect(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("json" | "jsonl") => Ok(Format::Jsonl),
            Some("parquet") => Ok(Format::Parquet),
            Some("csv") => Ok(Format::Csv),
            _ => Err(Error::data(
                path,
                None,
                None,
                "unknown format: expected .json/.jsonl, .parquet or .csv (or pass --format)",
            )),
        }
    }

    /// The `cop` convention of the format's usual source.
    pub fn default_cop_base(self) -> u8 {
        match self {
            Format::Jsonl | Format::Csv => 1,
            Format::Parquet => 0,
        }
    }
}

pub fn read_file(path: &Path, format: Format) -> Result<RawFile> {
    match format {
        Format::Jsonl => read_jsonl(path),
        Format::Parquet => {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let df = ParquetReader::new(file)
                .finish()
                .map_err(|e| Error::data(path, None, None, format!("cannot read parquet: {e}")))?;
            from_frame(path, &df)
        }
        Format::Csv => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            if let Err(e) = std::str::from_utf8(&bytes) {
                let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
                return Err(Error::data(path, Some(Loc::Line(line)), None, "invalid UTF-8"));
            }
            let df = CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(Some(0))
                .with_raise_if_empty(false)
                .into_reader_with_file_handle(std::io::Cursor::new(bytes))
                .finish()
                .map_err(|e| Error::data(path, None, None, format!("cannot read CSV: {e}")))?;
            from_frame(path, &df)
        }
    }
}

fn read_jsonl(path: &Path) -> Result<RawFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // A UTF-8 byte-order mark, as some Windows editors write, is not part of the first line.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut out = RawFile::default();
    let mut pieces = bytes.split(|&b| b == b'\n').peekable();
    let mut number = 0u64;
    while let Some(line) = pieces.next() {
        number += 1;
        let loc = Some(Loc::Line(number));
        let text = std::str::from_utf8(line).map_err(|e| {
            Error::data(path, loc, None, format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1))
        })?;
        if text.trim().is_empty() {
            if pieces.peek().is_some() {
                out.blank_lines += 1;
            }
            continue;
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
            Error::data(path, loc, None, format!("malformed JSON at column {}: {message}", e.column()))
        })?;
        let Value::Object(obj) = value else {
            return Err(Error::data(path, loc, None, "expected a JSON object"));
        };
        out.records.push(record_from_object(path, loc, &obj)?);
    }
    Ok(out)
}

fn record_from_object(path: &Path, loc: Option<Loc>, obj: &Map<String, Value>) -> Result<Record> {
    let text = |field: &str, required: bool| -> Result<Option<String>> {
        let err = |m: String| Error::data(path, loc, Some(field), m);
        match obj.get(field) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if field == "id" => Ok(Some(n.to_string())),
            None if required => Err(err("missing".into())),
            Some(Value::Null) if required => Err(err("is null".into())),
            None | Some(Value::Null) => Ok(None),
            Some(other) => Err(err(format!("expected a string, found {}", json_type(other)))),
        }
    };
    let required = |field: &str| text(field, true).map(Option::unwrap_or_default);
    let cop = match obj.get("cop") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(other) => {
            return Err(Error::data(path, loc, Some("cop"), format!("expected an integer, found {}", json_type(other))))
        }
    };
    Ok(Record {
        loc,
        id: required("id")?,
        question: required("question")?,
        options: [required("opa")?, required("opb")?, required("opc")?, required("opd")?],
        cop,
        choice_type: text("choice_type", false)?,
        exp: text("exp", false)?,
        subject_name: text("subject_name", false)?,
        topic_name: text("topic_name", false)?,
    })
}

fn json_type(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", truncate(s, 40)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Text of one column as owned values per row; `required` columns must exist and hold no nulls.
fn text_column(path: &Path, df: &DataFrame, field: &str, required: bool) -> Result<Option<Vec<Option<String>>>> {
    let Ok(col) = df.column(field) else {
        if required {
            let found: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
            return Err(Error::data(path, None, Some(field), format!("column missing (found: {})", found.join(", "))));
        }
        return Ok(None);
    };
    let col = match col.dtype() {
        DataType::String => col.clone(),
        DataType::Null => {
            col.cast(&DataType::String).map_err(|e| Error::data(path, None, Some(field), e.to_string()))?
        }
        dt if field == "id" && dt.is_integer() => {
            col.cast(&DataType::String).map_err(|e| Error::data(path, None, Some(field), e.to_string()))?
        }
        dt => return Err(Error::data(path, None, Some(field), format!("expected text, found {dt}"))),
    };
    let values: Vec<Option<String>> = col
        .str()
        .map_err(|e| Error::data(path, None, Some(field), e.to_string()))?
        .iter()
        .map(|v| v.map(str::to_string))
        .collect();
    if required {
        if let Some(row) = values.iter().position(Option::is_none) {
            return Err(Error::data(path, Some(Loc::Row(row as u64 + 1)), Some(field), "missing value"));
        }
    }
    Ok(Some(values))
}

/// `cop` as integers: integer columns as they are, text (CSV) parsed, anything else an error.
fn cop_column(path: &Path, df: &DataFrame) -> Result<Option<Vec<Option<i64>>>> {
    let Ok(col) = df.column("cop") else { return Ok(None) };
    let err = |row: Option<usize>, m: String| Error::data(path, row.map(|r| Loc::Row(r as u64 + 1)), Some("cop"), m);
    match col.dtype() {
        dt if dt.is_integer() || dt == &DataType::Null => {
            let col = col.cast(&DataType::Int64).map_err(|e| err(None, e.to_string()))?;
            Ok(Some(col.i64().map_err(|e| err(None, e.to_string()))?.iter().collect()))
        }
        DataType::String => {
            let strings = col.str().map_err(|e| err(None, e.to_string()))?;
            strings
                .iter()
                .enumerate()
                .map(|(row, v)| match v.map(str::trim) {
                    None | Some("") => Ok(None),
                    Some(s) => s
                        .parse::<i64>()
                        .map(Some)
                        .map_err(|_| err(Some(row), format!("expected an integer, found {:?}", truncate(s, 40)))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some)
        }
        dt => Err(err(None, format!("expected integers, found {dt}"))),
    }
}

fn from_frame(path: &Path, df: &DataFrame) -> Result<RawFile> {
    let required = |field: &str| -> Result<Vec<String>> {
        Ok(text_column(path, df, field, true)?.unwrap_or_default().into_iter().map(Option::unwrap_or_default).collect())
    };
    let optional = |field: &str| -> Result<Vec<Option<String>>> {
        Ok(text_column(path, df, field, false)?.unwrap_or_else(|| vec![None; df.height()]))
    };
    let ids = required("id")?;
    let questions = required("question")?;
    let mut options: Vec<std::vec::IntoIter<String>> = Vec::new();
    for field in OPTION_FIELDS {
        options.push(required(field)?.into_iter());
    }
    let cop = cop_column(path, df)?;
    let mut cop = cop.unwrap_or_else(|| vec![None; df.height()]).into_iter();
    let mut extra: Vec<std::vec::IntoIter<Option<String>>> = Vec::new();
    for field in ["choice_type", "exp", "subject_name", "topic_name"] {
        extra.push(optional(field)?.into_iter());
    }
    let mut records = Vec::with_capacity(df.height());
    for (row, (id, question)) in ids.into_iter().zip(questions).enumerate() {
        let mut next = |i: usize| options[i].next().unwrap_or_default();
        let opts = [next(0), next(1), next(2), next(3)];
        let mut more = |i: usize| extra[i].next().flatten();
        records.push(Record {
            loc: Some(Loc::Row(row as u64 + 1)),
            id,
            question,
            options: opts,
            cop: cop.next().flatten(),
            choice_type: more(0),
            exp: more(1),
            subject_name: more(2),
            topic_name: more(3),
        });
    }
    Ok(RawFile { records, blank_lines: 0 })
}
