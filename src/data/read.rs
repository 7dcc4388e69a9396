//! Readers for the three MedMCQA layouts. JSON Lines is parsed line by line (so every error
//! has its line number); parquet (Apache's parquet crate) and CSV (the csv crate) are read into
//! the columns medbert uses and checked column by column.

use super::{RawFile, Record, OPTION_FIELDS};
use crate::error::{Error, Loc, Result};
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
        Format::Parquet => from_table(path, read_parquet(path)?),
        Format::Csv => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            if let Err(e) = std::str::from_utf8(&bytes) {
                let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
                return Err(Error::data(path, Some(Loc::Line(line)), None, "invalid UTF-8"));
            }
            from_table(path, read_csv(path, &bytes)?)
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

/// A parquet or CSV file as the columns medbert reads: each present column's values, row by row.
/// Columns the file has but medbert does not read are never decoded.
struct Table {
    /// Every column name in the file, for the error that a required one is missing.
    names: Vec<String>,
    columns: Vec<(&'static str, Vec<Cell>)>,
    height: usize,
}

/// One value of a parquet or CSV column, as the checks below need it.
enum Cell {
    Null,
    Text(String),
    Int(i64),
    /// Anything else, by what it is ("a floating-point number", ...).
    Other(&'static str),
}

/// The columns medbert reads; the others in a file are left alone.
const COLUMNS: [&str; 11] =
    ["id", "question", "opa", "opb", "opc", "opd", "cop", "choice_type", "exp", "subject_name", "topic_name"];

impl Table {
    /// A column's values, moved out of the table (each column is read once).
    fn take(&mut self, field: &str) -> Option<Vec<Cell>> {
        let at = self.columns.iter().position(|(name, _)| *name == field)?;
        Some(self.columns.swap_remove(at).1)
    }
}

/// Reads the columns medbert uses with the Apache parquet crate's row reader, which decodes
/// every physical and logical type (integers of any width and signedness, dictionary-encoded
/// text such as pandas categories, nulls).
fn read_parquet(path: &Path) -> Result<Table> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::schema::types::Type;
    let unreadable =
        |e: parquet::errors::ParquetError| Error::data(path, None, None, format!("cannot read parquet: {e}"));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(unreadable)?;
    let schema = reader.metadata().file_metadata().schema();
    let names: Vec<String> = schema.get_fields().iter().map(|f| f.name().to_string()).collect();
    let wanted: Vec<_> = schema.get_fields().iter().filter(|f| COLUMNS.contains(&f.name())).cloned().collect();
    let mut columns: Vec<(&'static str, Vec<Cell>)> = wanted
        .iter()
        .filter_map(|f| COLUMNS.iter().find(|c| **c == f.name()))
        .map(|name| (*name, Vec::new()))
        .collect();
    let mut height = 0;
    // A file with none of these columns has no rows to read: "id" is then reported missing.
    if !columns.is_empty() {
        let projection = Type::group_type_builder(schema.name()).with_fields(wanted).build().map_err(unreadable)?;
        for row in reader.get_row_iter(Some(projection)).map_err(unreadable)? {
            let row = row.map_err(unreadable)?;
            for ((_, field), (_, cells)) in row.get_column_iter().zip(columns.iter_mut()) {
                cells.push(Cell::from_parquet(field));
            }
            height += 1;
        }
    }
    Ok(Table { names, columns, height })
}

impl Cell {
    fn from_parquet(field: &parquet::record::Field) -> Cell {
        use parquet::record::Field as F;
        match field {
            F::Null => Cell::Null,
            F::Str(s) => Cell::Text(s.clone()),
            F::Byte(v) => Cell::Int(i64::from(*v)),
            F::Short(v) => Cell::Int(i64::from(*v)),
            F::Int(v) => Cell::Int(i64::from(*v)),
            F::Long(v) => Cell::Int(*v),
            F::UByte(v) => Cell::Int(i64::from(*v)),
            F::UShort(v) => Cell::Int(i64::from(*v)),
            F::UInt(v) => Cell::Int(i64::from(*v)),
            F::ULong(v) => i64::try_from(*v).map_or(Cell::Other("an integer above 2^63"), Cell::Int),
            F::Bool(_) => Cell::Other("a boolean"),
            F::Float16(_) | F::Float(_) | F::Double(_) => Cell::Other("a floating-point number"),
            F::Decimal(_) => Cell::Other("a decimal"),
            F::Bytes(b) => match std::str::from_utf8(b.data()) {
                Ok(s) => Cell::Text(s.to_string()),
                Err(_) => Cell::Other("binary data"),
            },
            F::Date(_) => Cell::Other("a date"),
            F::TimeMillis(_) | F::TimeMicros(_) => Cell::Other("a time of day"),
            F::TimestampMillis(_) | F::TimestampMicros(_) => Cell::Other("a timestamp"),
            F::Group(_) | F::ListInternal(_) | F::MapInternal(_) => Cell::Other("a nested value"),
        }
    }
}

/// A CSV file with a header row; every value is text (an empty one is missing), `cop` parsed
/// as an integer later.
fn read_csv(path: &Path, bytes: &[u8]) -> Result<Table> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes);
    let unreadable = |e: csv::Error| {
        let line = e.position().map(|p| Loc::Line(p.line()));
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                format!("cannot read CSV: {len} fields where the header has {expected_len}")
            }
            _ => format!("cannot read CSV: {e}"),
        };
        Error::data(path, line, None, message)
    };
    let names: Vec<String> = reader.headers().map_err(unreadable)?.iter().map(str::to_string).collect();
    let positions: Vec<(&'static str, usize)> =
        COLUMNS.iter().filter_map(|c| names.iter().position(|n| n == c).map(|i| (*c, i))).collect();
    let mut columns: Vec<(&'static str, Vec<Cell>)> = positions.iter().map(|(c, _)| (*c, Vec::new())).collect();
    let mut height = 0;
    for record in reader.records() {
        let record = record.map_err(unreadable)?;
        for ((_, i), (_, cells)) in positions.iter().zip(columns.iter_mut()) {
            cells.push(match record.get(*i) {
                None | Some("") => Cell::Null,
                Some(s) => Cell::Text(s.to_string()),
            });
        }
        height += 1;
    }
    Ok(Table { names, columns, height })
}

/// Text of one column as owned values per row; `required` columns must exist and hold no nulls.
fn text_column(path: &Path, table: &mut Table, field: &str, required: bool) -> Result<Option<Vec<Option<String>>>> {
    let Some(cells) = table.take(field) else {
        if required {
            let found = table.names.join(", ");
            return Err(Error::data(path, None, Some(field), format!("column missing (found: {found})")));
        }
        return Ok(None);
    };
    let err = |row: usize, m: String| Error::data(path, Some(Loc::Row(row as u64 + 1)), Some(field), m);
    let mut values = Vec::with_capacity(cells.len());
    for (row, cell) in cells.into_iter().enumerate() {
        values.push(match cell {
            Cell::Text(s) => Some(s),
            Cell::Int(n) if field == "id" => Some(n.to_string()),
            Cell::Null if required => return Err(err(row, "missing value".into())),
            Cell::Null => None,
            Cell::Int(_) => return Err(err(row, "expected text, found an integer".into())),
            Cell::Other(what) => return Err(err(row, format!("expected text, found {what}"))),
        });
    }
    Ok(Some(values))
}

/// `cop` as integers: integer values as they are, text (CSV) parsed, anything else an error.
fn cop_column(path: &Path, table: &mut Table) -> Result<Option<Vec<Option<i64>>>> {
    let Some(cells) = table.take("cop") else { return Ok(None) };
    let err = |row: usize, m: String| Error::data(path, Some(Loc::Row(row as u64 + 1)), Some("cop"), m);
    cells
        .into_iter()
        .enumerate()
        .map(|(row, cell)| match cell {
            Cell::Null => Ok(None),
            Cell::Int(n) => Ok(Some(n)),
            Cell::Text(s) => match s.trim() {
                "" => Ok(None),
                s => s
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| err(row, format!("expected an integer, found {:?}", truncate(s, 40)))),
            },
            Cell::Other(what) => Err(err(row, format!("expected an integer, found {what}"))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn from_table(path: &Path, mut table: Table) -> Result<RawFile> {
    let height = table.height;
    let mut required = |field: &str| -> Result<Vec<String>> {
        let values = text_column(path, &mut table, field, true)?.unwrap_or_default();
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    };
    let ids = required("id")?;
    let questions = required("question")?;
    let mut options: Vec<std::vec::IntoIter<String>> = Vec::new();
    for field in OPTION_FIELDS {
        options.push(required(field)?.into_iter());
    }
    let cop = cop_column(path, &mut table)?;
    let mut cop = cop.unwrap_or_else(|| vec![None; height]).into_iter();
    let mut extra: Vec<std::vec::IntoIter<Option<String>>> = Vec::new();
    for field in ["choice_type", "exp", "subject_name", "topic_name"] {
        extra.push(text_column(path, &mut table, field, false)?.unwrap_or_else(|| vec![None; height]).into_iter());
    }
    let mut records = Vec::with_capacity(height);
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
