//! XLSX documents from a sheet spec (or from the inline context when there is no template).
//!
//! An xlsx template's content is not a Jinja document but a JSON *sheet spec*: which rows
//! to list and how to turn each one into typed, formatted cells. Only the pieces that vary
//! are minijinja: `rows` and every column `value` are expressions, `title` lines are
//! templates. The workbook itself is written by `rust_xlsxwriter`, so dates are real Excel
//! dates, amounts are numbers with a number format, and totals are live `SUM` formulas.
//!
//! ```json
//! {
//!   "sheets": [{
//!     "name": "Policies",
//!     "rows": "inline_context.policies",
//!     "title": ["Portfolio of {{ client.last_name }}", "As of {{ now }}"],
//!     "columns": [
//!       {"header": "Number",  "value": "row.policy_number",  "format": "text", "width": 18},
//!       {"header": "Premium", "value": "row.premium",        "format": "currency", "currency": "XAF", "width": 14},
//!       {"header": "Start",   "value": "row.effective_date", "format": "date"},
//!       {"header": "Rate",    "value": "row.rate",           "format": "percent"},
//!       {"header": "Count",   "value": "loop.index",         "format": "integer"}
//!     ],
//!     "totals": {"label": "Total", "columns": ["Premium", "Count"]}
//!   }]
//! }
//! ```
//!
//! - `sheets` (at least one): `name` must be a valid Excel sheet name (1 to 31 characters,
//!   none of `[ ] : * ? / \`, no leading or trailing apostrophe, not `History`), unique
//!   ignoring case.
//! - `rows`: an expression over the render context (`inline_context`, `policy`, `client`,
//!   `company`, `document`, `now`) that must give an array; one sheet row per element.
//! - `title` (optional): templates rendered once, one line each in column A above the
//!   table, the first in bold, then a blank line.
//! - `columns` (at least one, headers unique): `header`; `value`, an expression that sees
//!   the context plus `row` (the element) and `loop` (`index` from 1, `index0` from 0);
//!   `format`, one of
//!   - `general` (the default): numbers as numbers, booleans as booleans, the rest as text;
//!   - `text`: everything as text;
//!   - `number` (`0.00`), `integer` (`0`), `percent` (`0.00%`), `currency`
//!     (`#,##0.00 "EUR"`, or `#,##0 "XAF"` for currencies without minor units; `currency`
//!     is the ISO code): numbers, and strings that parse as numbers; anything else as text;
//!   - `date` (`yyyy-mm-dd`), `datetime` (`yyyy-mm-dd hh:mm`): RFC 3339 or ISO 8601
//!     strings written as Excel dates, at the wall-clock time they were written with;
//!     anything else as text;
//!
//!   `num_format` (optional) replaces the Excel number format; `width` (0 to 255
//!   characters) replaces the default width. A null or undefined value is an empty cell.
//! - `totals` (optional): after the last row, `label` (default `Total`, `""` for none) in
//!   the first column and a `SUM` over each named numeric column, with the computed value
//!   cached so viewers that do not recalculate still show it.
//!
//! The header row is bold, frozen and carries an autofilter. Worksheets use constant-memory
//! mode (each row goes to a temporary file once the next one starts), so a 100 000-row
//! export costs the same memory as a ten-row one.
//!
//! Without a template, [`render_xlsx`] writes one sheet "Data" with a `Key | Value` row per
//! leaf of `inline_context` (`client.address.city`, `items[0].name`).

use std::collections::HashSet;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime};
use minijinja::value::{Value, ValueKind, merge_maps};
use minijinja::{Environment, ErrorKind, Expression, Template};
use rust_xlsxwriter::{
    ColNum, Format, Formula, RowNum, Workbook, Worksheet, XlsxError, cell_range,
};
use serde::Deserialize;

use crate::RenderError;

/// Rows per worksheet, title, header and totals included.
const EXCEL_MAX_ROWS: usize = 1_048_576;
const EXCEL_MAX_COLUMNS: usize = 16_384;
const EXCEL_MAX_WIDTH: f64 = 255.0;
/// Integers beyond this lose digits as Excel doubles: a policy or account number that
/// large is an identifier, better kept exact as text than rounded.
const EXACT_INTEGER_LIMIT: u64 = 1 << 53;
/// ISO 4217 currencies without minor units: showing cents for them would be wrong.
const ZERO_DECIMAL_CURRENCIES: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];

/// Parses and checks a sheet spec, so that a broken one is refused when the template is
/// saved rather than when a document is due.
pub fn check_spec(content: &str) -> Result<(), RenderError> {
    let spec = Spec::parse(content)?;
    let env = Environment::new();
    for sheet in &spec.sheets {
        sheet.compile(&env)?;
    }
    Ok(())
}

/// Renders a workbook from a sheet spec, or, when `spec` is `None`, lists the context's
/// `inline_context`. `fuel` is the budget of each single evaluation (one cell, the `rows`
/// expression, one title line), not of the whole workbook: see `SheetPlan::write` for why.
/// Output over `max_bytes` is refused.
pub fn render_xlsx(
    spec: Option<&str>,
    context: serde_json::Value,
    fuel: u64,
    max_bytes: usize,
) -> Result<Vec<u8>, RenderError> {
    let mut workbook = Workbook::new();
    match spec {
        None => write_inline_context(&mut workbook, &context)?,
        Some(source) => {
            let spec = Spec::parse(source)?;
            let mut env = Environment::new();
            env.set_fuel(Some(fuel));
            // Read in place, not converted: a context of 100,000 rows is not copied.
            let context = crate::json_view::view(context);
            for sheet in &spec.sheets {
                let plan = sheet.compile(&env)?;
                let worksheet = new_worksheet(&mut workbook, &sheet.name)?;
                plan.write(worksheet, &context)?;
            }
        }
    }
    let bytes = workbook
        .save_to_buffer()
        .map_err(|e| RenderError::Runtime(format!("could not assemble the workbook: {e}")))?;
    if bytes.len() > max_bytes {
        return Err(RenderError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    Ok(bytes)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    sheets: Vec<SheetSpec>,
}

// Unknown fields are refused everywhere: a misspelt `widht` or `totls` would otherwise
// be ignored silently and the author would never learn why the sheet looks wrong.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SheetSpec {
    name: String,
    rows: String,
    #[serde(default)]
    title: Vec<String>,
    columns: Vec<ColumnSpec>,
    #[serde(default)]
    totals: Option<TotalsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnSpec {
    header: String,
    value: String,
    #[serde(default)]
    format: CellFormat,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    num_format: Option<String>,
    #[serde(default)]
    width: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TotalsSpec {
    #[serde(default = "default_totals_label")]
    label: String,
    columns: Vec<String>,
}

fn default_totals_label() -> String {
    "Total".to_owned()
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CellFormat {
    #[default]
    General,
    Text,
    Number,
    Integer,
    Currency,
    Percent,
    Date,
    Datetime,
}

impl CellFormat {
    fn name(self) -> &'static str {
        match self {
            CellFormat::General => "general",
            CellFormat::Text => "text",
            CellFormat::Number => "number",
            CellFormat::Integer => "integer",
            CellFormat::Currency => "currency",
            CellFormat::Percent => "percent",
            CellFormat::Date => "date",
            CellFormat::Datetime => "datetime",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(
            self,
            CellFormat::General
                | CellFormat::Number
                | CellFormat::Integer
                | CellFormat::Currency
                | CellFormat::Percent
        )
    }

    /// Wide enough for typical values of the format, so a fresh sheet reads without
    /// resizing columns.
    fn default_width(self) -> f64 {
        match self {
            CellFormat::Integer | CellFormat::Percent => 10.0,
            CellFormat::Date => 12.0,
            CellFormat::Currency => 16.0,
            CellFormat::Datetime => 17.0,
            CellFormat::General | CellFormat::Text | CellFormat::Number => 14.0,
        }
    }

    /// Turns what an expression gave into the cell Excel should hold.
    fn cell(self, value: &Value) -> Cell {
        if value.is_undefined() || value.is_none() {
            return Cell::Empty;
        }
        match self {
            CellFormat::Text => Cell::Text(display(value)),
            CellFormat::General => match value.kind() {
                ValueKind::Number => number_cell(value),
                ValueKind::Bool => Cell::Bool(value.is_true()),
                _ => Cell::Text(display(value)),
            },
            CellFormat::Number
            | CellFormat::Integer
            | CellFormat::Currency
            | CellFormat::Percent => match value.kind() {
                ValueKind::Number => number_cell(value),
                ValueKind::Bool => Cell::Bool(value.is_true()),
                ValueKind::String => {
                    let text = value.as_str().unwrap_or_default();
                    match text.trim().parse::<f64>() {
                        Ok(number) if number.is_finite() => Cell::Number(number),
                        _ => Cell::Text(text.to_owned()),
                    }
                }
                _ => Cell::Text(display(value)),
            },
            CellFormat::Date | CellFormat::Datetime => {
                let text = display(value);
                match (value.as_str().and_then(parse_datetime), self) {
                    (Some(datetime), CellFormat::Date) => Cell::Date(datetime.date()),
                    (Some(datetime), _) => Cell::DateTime(datetime),
                    (None, _) => Cell::Text(text),
                }
            }
        }
    }
}

/// What ends up in one cell, before formatting.
enum Cell {
    Empty,
    Number(f64),
    Text(String),
    Bool(bool),
    Date(NaiveDate),
    DateTime(NaiveDateTime),
}

impl Cell {
    fn write(
        &self,
        worksheet: &mut Worksheet,
        row: RowNum,
        col: ColNum,
        format: &Format,
    ) -> Result<(), XlsxError> {
        match self {
            // Nothing is written at all: a formatted blank would only grow the file.
            Cell::Empty => return Ok(()),
            Cell::Number(number) => worksheet.write_number_with_format(row, col, *number, format),
            Cell::Text(text) => worksheet.write_string_with_format(row, col, text, format),
            Cell::Bool(flag) => worksheet.write_boolean_with_format(row, col, *flag, format),
            Cell::Date(date) => worksheet.write_datetime_with_format(row, col, date, format),
            Cell::DateTime(datetime) => {
                worksheet.write_datetime_with_format(row, col, datetime, format)
            }
        }
        .map(|_| ())
    }
}

fn number_cell(value: &Value) -> Cell {
    if value.is_integer() {
        return match value.as_i64() {
            Some(int) if int.unsigned_abs() <= EXACT_INTEGER_LIMIT => Cell::Number(int as f64),
            _ => Cell::Text(value.to_string()),
        };
    }
    match f64::try_from(value.clone()) {
        Ok(number) if number.is_finite() => Cell::Number(number),
        _ => Cell::Text(value.to_string()),
    }
}

/// Text for a value: strings as they are, lists and maps as JSON rather than minijinja's
/// debug-like rendering.
fn display(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {
            serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
        }
        _ => value.to_string(),
    }
}

/// Dates from RFC 3339 timestamps and ISO 8601 dates or local date-times. An offset is
/// dropped, not converted: Excel has no time zones, and the time the source wrote is the
/// one a reader expects to see.
fn parse_datetime(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    let datetime = DateTime::parse_from_rfc3339(text)
        .map(|datetime| datetime.naive_local())
        .ok()
        .or_else(|| {
            [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M",
                "%Y-%m-%d %H:%M",
            ]
            .iter()
            .find_map(|pattern| NaiveDateTime::parse_from_str(text, pattern).ok())
        })
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(|date| date.and_time(NaiveTime::MIN))
        })?;
    // Excel's calendar starts in 1900 and ends in 9999; outside it the value stays text.
    (1900..=9999).contains(&datetime.year()).then_some(datetime)
}

impl Spec {
    fn parse(content: &str) -> Result<Spec, RenderError> {
        let spec: Spec =
            serde_json::from_str(content).map_err(|e| RenderError::InvalidSpec(e.to_string()))?;
        if spec.sheets.is_empty() {
            return Err(RenderError::InvalidSpec(
                "`sheets` is empty: a workbook needs at least one sheet".to_owned(),
            ));
        }
        let mut names = HashSet::new();
        for sheet in &spec.sheets {
            check_sheet_name(&sheet.name).map_err(RenderError::InvalidSpec)?;
            // Excel compares sheet names ignoring case and refuses to open a workbook
            // with two "Policies"/"policies".
            if !names.insert(sheet.name.to_lowercase()) {
                return Err(RenderError::InvalidSpec(format!(
                    "two sheets are named \"{}\" (Excel ignores case in sheet names)",
                    sheet.name
                )));
            }
            sheet.check().map_err(|reason| {
                RenderError::InvalidSpec(format!("sheet \"{}\": {reason}", sheet.name))
            })?;
        }
        Ok(spec)
    }
}

fn check_sheet_name(name: &str) -> Result<(), String> {
    // Excel counts UTF-16 code units, as does rust_xlsxwriter's own check.
    let length = name.encode_utf16().count();
    if length == 0 {
        return Err("a sheet name is empty; Excel needs 1 to 31 characters".to_owned());
    }
    if length > 31 {
        return Err(format!(
            "sheet name \"{name}\" is {length} characters long; Excel allows at most 31"
        ));
    }
    if let Some(bad) = name.chars().find(|c| "[]:*?/\\".contains(*c)) {
        return Err(format!(
            "sheet name \"{name}\" contains '{bad}'; Excel forbids [ ] : * ? / \\ in sheet names"
        ));
    }
    if name.starts_with('\'') || name.ends_with('\'') {
        return Err(format!(
            "sheet name \"{name}\" starts or ends with an apostrophe, which Excel refuses"
        ));
    }
    if name.eq_ignore_ascii_case("history") {
        return Err(format!("sheet name \"{name}\" is reserved by Excel"));
    }
    Ok(())
}

impl SheetSpec {
    fn check(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Err("`columns` is empty: a sheet needs at least one column".to_owned());
        }
        if self.columns.len() > EXCEL_MAX_COLUMNS {
            return Err(format!(
                "{} columns, over Excel's limit of {EXCEL_MAX_COLUMNS}",
                self.columns.len()
            ));
        }
        let mut headers = HashSet::new();
        for column in &self.columns {
            // Totals name their columns by header, so a repeated header would be ambiguous.
            if !headers.insert(column.header.as_str()) {
                return Err(format!("two columns are headed \"{}\"", column.header));
            }
            column
                .check()
                .map_err(|reason| format!("column \"{}\": {reason}", column.header))?;
        }
        Ok(())
    }

    /// For each column, whether the totals row sums it.
    fn summed_columns(&self, totals: &TotalsSpec) -> Result<Vec<bool>, String> {
        if totals.columns.is_empty() {
            return Err("`totals.columns` is empty: name the columns to sum".to_owned());
        }
        let mut summed = vec![false; self.columns.len()];
        for wanted in &totals.columns {
            let Some(index) = self.columns.iter().position(|c| &c.header == wanted) else {
                let known: Vec<&str> = self.columns.iter().map(|c| c.header.as_str()).collect();
                return Err(format!(
                    "totals name column \"{wanted}\", which is not one of the headers ({})",
                    known.join(", ")
                ));
            };
            let format = self.columns[index].format;
            if !format.is_numeric() {
                return Err(format!(
                    "totals cannot sum \"{wanted}\": its format is {}; only general, number, \
                     integer, currency and percent columns add up",
                    format.name()
                ));
            }
            if index == 0 && !totals.label.is_empty() {
                return Err(format!(
                    "totals cannot sum \"{wanted}\": the first column holds the label \"{}\" \
                     (set \"label\": \"\" to sum it instead)",
                    totals.label
                ));
            }
            summed[index] = true;
        }
        Ok(summed)
    }

    /// Compiles every expression and template once, so rows only evaluate them.
    fn compile<'env, 'src>(
        &'src self,
        env: &'env Environment<'src>,
    ) -> Result<SheetPlan<'env, 'src>, RenderError> {
        let invalid = |place: String, err: minijinja::Error| {
            RenderError::InvalidSpec(format!(
                "sheet \"{}\", {place}: {}",
                self.name,
                explain(&err)
            ))
        };
        let rows = env
            .compile_expression(&self.rows)
            .map_err(|e| invalid(format!("`rows` expression `{}`", self.rows), e))?;
        let titles = self
            .title
            .iter()
            .enumerate()
            .map(|(i, line)| {
                env.template_from_str(line)
                    .map_err(|e| invalid(format!("title line {}", i + 1), e))
            })
            .collect::<Result<_, _>>()?;
        let columns = self
            .columns
            .iter()
            .map(|spec| {
                let value = env
                    .compile_expression(&spec.value)
                    .map_err(|e| invalid(format!("column \"{}\"", spec.header), e))?;
                let format = match spec.excel_format() {
                    Some(code) => Format::new().set_num_format(code),
                    None => Format::new(),
                };
                Ok(ColumnPlan {
                    spec,
                    value,
                    total_format: format.clone().set_bold(),
                    format,
                })
            })
            .collect::<Result<_, RenderError>>()?;
        let summed = match &self.totals {
            Some(totals) => self.summed_columns(totals).map_err(|reason| {
                RenderError::InvalidSpec(format!("sheet \"{}\": {reason}", self.name))
            })?,
            None => Vec::new(),
        };
        Ok(SheetPlan {
            spec: self,
            rows,
            titles,
            columns,
            summed,
        })
    }
}

impl ColumnSpec {
    fn check(&self) -> Result<(), String> {
        if let Some(width) = self.width
            && !(0.0..=EXCEL_MAX_WIDTH).contains(&width)
        {
            return Err(format!("width {width} is outside Excel's 0 to 255"));
        }
        if let Some(code) = &self.currency {
            if self.format != CellFormat::Currency {
                return Err(format!(
                    "`currency` is set but the format is {}, not currency",
                    self.format.name()
                ));
            }
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "currency \"{code}\" is not a three-letter ISO 4217 code such as XAF or EUR"
                ));
            }
        }
        if self
            .num_format
            .as_deref()
            .is_some_and(|code| code.trim().is_empty())
        {
            return Err("`num_format` is empty; leave it out to use the format's own".to_owned());
        }
        Ok(())
    }

    /// The Excel number format code, `None` for Excel's General.
    fn excel_format(&self) -> Option<String> {
        if let Some(code) = &self.num_format {
            return Some(code.clone());
        }
        let code = match self.format {
            CellFormat::General | CellFormat::Text => return None,
            CellFormat::Number => "0.00".to_owned(),
            CellFormat::Integer => "0".to_owned(),
            CellFormat::Percent => "0.00%".to_owned(),
            CellFormat::Date => "yyyy-mm-dd".to_owned(),
            CellFormat::Datetime => "yyyy-mm-dd hh:mm".to_owned(),
            CellFormat::Currency => match self.currency.as_deref() {
                None => "#,##0.00".to_owned(),
                Some(code) if ZERO_DECIMAL_CURRENCIES.contains(&code) => {
                    format!("#,##0 \"{code}\"")
                }
                Some(code) => format!("#,##0.00 \"{code}\""),
            },
        };
        Some(code)
    }

    fn width(&self) -> f64 {
        // Room for the header and the autofilter's drop-down arrow.
        let header = self.header.chars().count() as f64 + 4.0;
        self.width
            .unwrap_or_else(|| header.clamp(self.format.default_width(), 60.0))
    }
}

/// A sheet with its expressions compiled and its formats built, ready to write.
struct SheetPlan<'env, 'src> {
    spec: &'src SheetSpec,
    rows: Expression<'env, 'src>,
    titles: Vec<Template<'env, 'src>>,
    columns: Vec<ColumnPlan<'env, 'src>>,
    /// Empty without totals, else one flag per column.
    summed: Vec<bool>,
}

struct ColumnPlan<'env, 'src> {
    spec: &'src ColumnSpec,
    value: Expression<'env, 'src>,
    format: Format,
    total_format: Format,
}

impl SheetPlan<'_, '_> {
    /// Writes titles, header, one row per element of `rows` and the totals, strictly top
    /// to bottom as constant-memory mode requires.
    ///
    /// Fuel: minijinja gives every evaluation (one expression, one title render) a fresh
    /// budget of the environment's fuel, and this keeps it that way rather than sharing
    /// one budget across the sheet. What fuel must stop is a single pathological
    /// expression (a filter chain over `range(...)`), and per evaluation it does so at the
    /// first row. A sheet-wide budget would instead grow with the data: a legitimate
    /// 100 000 × 5 export spends a few fuel per cell, and any fixed total would refuse
    /// large honest exports. The total work stays bounded by rows × columns × fuel, and
    /// Excel caps rows at 1 048 576.
    fn write(&self, worksheet: &mut Worksheet, context: &Value) -> Result<(), RenderError> {
        let sheet = &self.spec.name;
        let sheet_error =
            |e: XlsxError| RenderError::Runtime(format!("sheet \"{sheet}\": {}", xlsx_reason(&e)));
        let bold = Format::new().set_bold();

        let mut row: RowNum = 0;
        for (i, title) in self.titles.iter().enumerate() {
            let line = title.render(context).map_err(|e| {
                evaluation_error(&e, || format!("sheet \"{sheet}\", title line {}", i + 1))
            })?;
            let written = if i == 0 {
                worksheet.write_string_with_format(row, 0, line, &bold)
            } else {
                worksheet.write_string(row, 0, line)
            };
            written.map_err(sheet_error)?;
            row += 1;
        }
        if !self.titles.is_empty() {
            row += 1;
        }

        let header_row = row;
        for (col, column) in (0..).zip(&self.columns) {
            worksheet
                .write_string_with_format(header_row, col, &column.spec.header, &bold)
                .and_then(|ws| ws.set_column_width(col, column.spec.width()))
                .map_err(sheet_error)?;
        }
        worksheet
            .set_freeze_panes(header_row + 1, 0)
            .map_err(sheet_error)?;

        let rows = self.rows.eval(context).map_err(|e| {
            evaluation_error(&e, || {
                format!("sheet \"{sheet}\", `rows` expression `{}`", self.spec.rows)
            })
        })?;
        if !matches!(rows.kind(), ValueKind::Seq | ValueKind::Iterable) {
            return Err(RenderError::Runtime(format!(
                "sheet \"{sheet}\": `rows` expression `{}` gave {}, not an array",
                self.spec.rows,
                describe_kind(&rows)
            )));
        }
        let items = rows.try_iter().map_err(|e| {
            RenderError::Runtime(format!(
                "sheet \"{sheet}\": cannot list `rows`: {}",
                explain(&e)
            ))
        })?;

        let first_data_row = header_row + 1;
        let mut sums = vec![0.0_f64; self.columns.len()];
        let mut count: RowNum = 0;
        for (index0, item) in items.enumerate() {
            let excel_row = first_data_row as usize + index0;
            if excel_row >= EXCEL_MAX_ROWS {
                return Err(RenderError::Runtime(format!(
                    "sheet \"{sheet}\": `rows` gave more rows than Excel's {EXCEL_MAX_ROWS} per \
                     sheet (titles and header included)"
                )));
            }
            let excel_row = excel_row as RowNum;
            let row_context = merge_maps([
                context.clone(),
                Value::from_pairs([
                    ("row", item),
                    (
                        "loop",
                        Value::from_pairs([("index", index0 + 1), ("index0", index0)]),
                    ),
                ]),
            ]);
            for (col, column) in (0..).zip(&self.columns) {
                let place = || {
                    format!(
                        "sheet \"{sheet}\", column \"{}\", row {} (Excel row {})",
                        column.spec.header,
                        index0 + 1,
                        excel_row + 1
                    )
                };
                let value = column
                    .value
                    .eval(&row_context)
                    .map_err(|e| evaluation_error(&e, place))?;
                let cell = column.spec.format.cell(&value);
                if let (Some(&true), Cell::Number(number)) = (self.summed.get(col as usize), &cell)
                {
                    sums[col as usize] += number;
                }
                cell.write(worksheet, excel_row, col, &column.format)
                    .map_err(|e| {
                        RenderError::Runtime(format!("{}: {}", place(), xlsx_reason(&e)))
                    })?;
            }
            count += 1;
        }

        let last_col = (self.columns.len() - 1) as ColNum;
        worksheet
            .autofilter(header_row, 0, header_row + count, last_col)
            .map_err(sheet_error)?;

        if let Some(totals) = &self.spec.totals {
            let totals_row = first_data_row + count;
            if !totals.label.is_empty() {
                worksheet
                    .write_string_with_format(totals_row, 0, &totals.label, &bold)
                    .map_err(sheet_error)?;
            }
            for ((col, column), sum) in (0..).zip(&self.columns).zip(&sums) {
                if !self.summed[col as usize] {
                    continue;
                }
                let written = if count == 0 {
                    // SUM over an empty range has no valid reference to write.
                    worksheet.write_number_with_format(totals_row, col, 0.0, &column.total_format)
                } else {
                    let range = cell_range(first_data_row, col, totals_row - 1, col);
                    let formula = Formula::new(format!("SUM({range})")).set_result(sum.to_string());
                    worksheet.write_formula_with_format(
                        totals_row,
                        col,
                        formula,
                        &column.total_format,
                    )
                };
                written.map_err(sheet_error)?;
            }
        }
        Ok(())
    }
}

fn new_worksheet<'w>(
    workbook: &'w mut Workbook,
    name: &str,
) -> Result<&'w mut Worksheet, RenderError> {
    let worksheet = workbook
        .add_worksheet_with_constant_memory()
        .map_err(|e| RenderError::Runtime(format!("could not start a worksheet: {e}")))?;
    worksheet
        .set_name(name)
        .map_err(|e| RenderError::InvalidSpec(format!("sheet name \"{name}\": {e}")))
}

/// Fuel exhaustion keeps its own variant (the job's error says "runaway loop"); anything
/// else says where it happened.
fn evaluation_error(err: &minijinja::Error, place: impl FnOnce() -> String) -> RenderError {
    if matches!(err.kind(), ErrorKind::OutOfFuel) {
        RenderError::OutOfFuel
    } else {
        RenderError::Runtime(format!("{}: {}", place(), explain(err)))
    }
}

/// The error without minijinja's "(in <expression>:1)" suffix, which names nothing useful
/// for a one-line expression; the caller says which sheet, column and row it was.
fn explain(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

fn describe_kind(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => "nothing (undefined: check the path)".to_owned(),
        ValueKind::None => "null".to_owned(),
        ValueKind::Map => "an object".to_owned(),
        kind => format!("a {kind} ({})", truncated(&display(value), 40)),
    }
}

fn truncated(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn xlsx_reason(err: &XlsxError) -> String {
    match err {
        XlsxError::MaxStringLengthExceeded => {
            "a value is longer than Excel's limit of 32 767 characters per cell".to_owned()
        }
        XlsxError::RowColumnLimitError => {
            format!("the sheet goes past Excel's limit of {EXCEL_MAX_ROWS} rows")
        }
        other => other.to_string(),
    }
}

/// No template: one `Key | Value` row per leaf of `inline_context`, so every value is
/// readable and sortable instead of one cell holding a dump of the whole map.
fn write_inline_context(
    workbook: &mut Workbook,
    context: &serde_json::Value,
) -> Result<(), RenderError> {
    let worksheet = new_worksheet(workbook, "Data")?;
    let sheet_error =
        |e: XlsxError| RenderError::Runtime(format!("sheet \"Data\": {}", xlsx_reason(&e)));
    let bold = Format::new().set_bold();
    worksheet
        .write_string_with_format(0, 0, "Key", &bold)
        .and_then(|ws| ws.write_string_with_format(0, 1, "Value", &bold))
        .and_then(|ws| ws.set_column_width(0, 30))
        .and_then(|ws| ws.set_column_width(1, 50))
        .and_then(|ws| ws.set_freeze_panes(1, 0))
        .map_err(sheet_error)?;

    let mut row: RowNum = 0;
    if let Some(root) = context.get("inline_context") {
        let mut path = String::new();
        flatten(root, &mut path, &mut |key, leaf| {
            row += 1;
            if row as usize >= EXCEL_MAX_ROWS {
                return Err(XlsxError::RowColumnLimitError);
            }
            // A scalar inline_context has no path of its own.
            let key = if key.is_empty() {
                "inline_context"
            } else {
                key
            };
            worksheet.write_string(row, 0, key)?;
            match leaf {
                serde_json::Value::String(text) => worksheet.write_string(row, 1, text)?,
                serde_json::Value::Bool(flag) => worksheet.write_boolean(row, 1, *flag)?,
                serde_json::Value::Number(number) => match number.as_f64() {
                    Some(float) if is_exact(number) => worksheet.write_number(row, 1, float)?,
                    _ => worksheet.write_string(row, 1, number.to_string())?,
                },
                // Null, and the empty objects and arrays that have no leaf: the key alone.
                _ => worksheet,
            };
            Ok(())
        })
        .map_err(|(key, e)| {
            RenderError::Runtime(format!(
                "sheet \"Data\", key \"{key}\": {}",
                xlsx_reason(&e)
            ))
        })?;
    }
    worksheet.autofilter(0, 0, row, 1).map_err(sheet_error)?;
    Ok(())
}

/// Whether an Excel double holds this JSON number without losing digits.
fn is_exact(number: &serde_json::Number) -> bool {
    match (number.as_i64(), number.as_u64()) {
        (Some(int), _) => int.unsigned_abs() <= EXACT_INTEGER_LIMIT,
        (None, Some(uint)) => uint <= EXACT_INTEGER_LIMIT,
        (None, None) => true,
    }
}

/// Calls `emit` with the path of every leaf, in document order. On failure, returns the
/// path it failed on.
fn flatten(
    value: &serde_json::Value,
    path: &mut String,
    emit: &mut dyn FnMut(&str, &serde_json::Value) -> Result<(), XlsxError>,
) -> Result<(), (String, XlsxError)> {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let parent = path.len();
                push_key(path, key);
                flatten(child, path, emit)?;
                path.truncate(parent);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for (index, child) in items.iter().enumerate() {
                let parent = path.len();
                let _ = write!(path, "[{index}]");
                flatten(child, path, emit)?;
                path.truncate(parent);
            }
        }
        leaf => emit(path, leaf).map_err(|e| (path.clone(), e))?,
    }
    Ok(())
}

/// `a.b` for plain keys; keys that would make the path ambiguous are quoted, `a["x.y"]`.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty() && !key.contains(['.', '[', ']', '"']);
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&serde_json::Value::from(key).to_string());
        path.push(']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{Cursor, Read};
    use std::time::Instant;

    const FUEL: u64 = 5_000_000;

    /// What one `<c>` element of a worksheet says, resolved against the shared strings.
    #[derive(Debug)]
    struct CellXml {
        style: usize,
        kind: Option<String>,
        formula: Option<String>,
        text: String,
    }

    /// One worksheet of a rendered workbook, read back through the zip container.
    struct Sheet {
        xml: String,
        shared: Vec<String>,
        styles: String,
    }

    fn part(bytes: &[u8], name: &str) -> Option<String> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut file = archive.by_name(name).ok()?;
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        Some(text)
    }

    fn between<'a>(text: &'a str, open: &str, close: &str) -> Vec<&'a str> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            let after = &rest[start + open.len()..];
            let Some(end) = after.find(close) else { break };
            found.push(&after[..end]);
            rest = &after[end + close.len()..];
        }
        found
    }

    fn attr(tag: &str, name: &str) -> Option<String> {
        between(tag, &format!(" {name}=\""), "\"")
            .first()
            .map(|v| v.to_string())
    }

    fn unescape(text: &str) -> String {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }

    /// The text of `<t>` runs, whatever attributes the `<t>` carries.
    fn t_text(fragment: &str) -> String {
        between(fragment, "<t", "</t>")
            .iter()
            .map(|run| unescape(&run[run.find('>').unwrap() + 1..]))
            .collect()
    }

    impl Sheet {
        fn open(bytes: &[u8]) -> Sheet {
            let shared = part(bytes, "xl/sharedStrings.xml")
                .map(|xml| {
                    between(&xml, "<si>", "</si>")
                        .into_iter()
                        .map(t_text)
                        .collect()
                })
                .unwrap_or_default();
            Sheet {
                xml: part(bytes, "xl/worksheets/sheet1.xml").unwrap(),
                shared,
                styles: part(bytes, "xl/styles.xml").unwrap(),
            }
        }

        fn cell(&self, reference: &str) -> Option<CellXml> {
            let open = format!("<c r=\"{reference}\"");
            let start = self
                .xml
                .match_indices(&open)
                .map(|(i, _)| i)
                .find(|i| matches!(self.xml.as_bytes()[i + open.len()], b' ' | b'>' | b'/'))?;
            let rest = &self.xml[start..];
            let tag_end = rest.find('>').unwrap();
            let tag = &rest[..tag_end];
            let body = if tag.ends_with('/') {
                ""
            } else {
                &rest[tag_end + 1..rest.find("</c>").unwrap()]
            };
            let kind = attr(tag, "t");
            let value = between(body, "<v>", "</v>").first().map(|v| unescape(v));
            let text = match kind.as_deref() {
                Some("inlineStr") => t_text(body),
                Some("s") => self.shared[value.unwrap().parse::<usize>().unwrap()].clone(),
                _ => value.unwrap_or_default(),
            };
            Some(CellXml {
                style: attr(tag, "s").map_or(0, |s| s.parse().unwrap()),
                kind,
                formula: between(body, "<f>", "</f>").first().map(|f| unescape(f)),
                text,
            })
        }

        fn text(&self, reference: &str) -> String {
            self.cell(reference)
                .unwrap_or_else(|| panic!("no cell {reference}"))
                .text
        }

        /// The width of a 1-based column, from the `<col>` range that covers it.
        fn column_width(&self, col: usize) -> String {
            between(&self.xml, "<col ", "/>")
                .into_iter()
                .map(|tag| format!(" {tag}"))
                .find(|tag| {
                    let bound = |name| attr(tag, name).unwrap().parse::<usize>().unwrap();
                    (bound("min")..=bound("max")).contains(&col)
                })
                .and_then(|tag| attr(&tag, "width"))
                .unwrap_or_else(|| panic!("no width for column {col}"))
        }

        /// The `xf` record a cell's style index points at.
        fn xf(&self, style: usize) -> String {
            let cell_xfs = between(&self.styles, "<cellXfs", "</cellXfs>")[0];
            let xfs: Vec<&str> = cell_xfs.split("<xf ").skip(1).collect();
            xfs[style].to_owned()
        }

        fn number_format(&self, style: usize) -> String {
            let id = attr(&format!(" {}", self.xf(style)), "numFmtId").unwrap();
            between(&self.styles, "<numFmt ", "/>")
                .into_iter()
                .find(|f| attr(&format!(" {f}"), "numFmtId").as_deref() == Some(id.as_str()))
                .and_then(|f| attr(&format!(" {f}"), "formatCode"))
                .map(|code| unescape(&code))
                .unwrap_or_else(|| format!("builtin {id}"))
        }

        fn is_bold(&self, style: usize) -> bool {
            let font: usize = attr(&format!(" {}", self.xf(style)), "fontId")
                .unwrap()
                .parse()
                .unwrap();
            let fonts = between(&self.styles, "<fonts", "</fonts>")[0];
            fonts
                .split("<font>")
                .skip(1)
                .nth(font)
                .unwrap()
                .contains("<b/>")
        }
    }

    fn excel_serial(date: &str) -> String {
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
        let epoch = NaiveDate::from_ymd_opt(1899, 12, 30).unwrap();
        (date - epoch).num_days().to_string()
    }

    fn portfolio_context() -> serde_json::Value {
        json!({
            "inline_context": {"policies": [
                {"policy_number": "P-001", "premium": 150000, "effective_date": "2024-01-15", "rate": 0.05},
                {"policy_number": "P-002", "premium": "25000.5", "effective_date": "2024-03-01T09:30:00+01:00", "rate": 0.1},
                {"policy_number": "P-003", "premium": 1000, "effective_date": "soon", "rate": null},
            ]},
            "client": {"last_name": "Mbarga & Fils"},
            "now": "2024-06-30T12:00:00Z",
        })
    }

    const PORTFOLIO: &str = r#"{
      "sheets": [{
        "name": "Policies",
        "rows": "inline_context.policies",
        "title": ["Portfolio of {{ client.last_name }}", "As of {{ now }}"],
        "columns": [
          {"header": "Number",  "value": "row.policy_number",  "format": "text", "width": 18},
          {"header": "Premium", "value": "row.premium",        "format": "currency", "currency": "XAF", "width": 14},
          {"header": "Start",   "value": "row.effective_date", "format": "date"},
          {"header": "Rate",    "value": "row.rate",           "format": "percent"},
          {"header": "Count",   "value": "loop.index",         "format": "integer"}
        ],
        "totals": {"label": "Total", "columns": ["Premium", "Count"]}
      }]
    }"#;

    fn render(spec: &str, context: &serde_json::Value) -> Result<Vec<u8>, RenderError> {
        render_xlsx(Some(spec), context.clone(), FUEL, usize::MAX)
    }

    fn spec_error(spec: &str) -> String {
        match check_spec(spec) {
            Err(RenderError::InvalidSpec(reason)) => reason,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    fn one_sheet(rows: &str, columns: serde_json::Value) -> String {
        json!({"sheets": [{"name": "S", "rows": rows, "columns": columns}]}).to_string()
    }

    #[test]
    fn the_documented_example_is_a_valid_spec() {
        check_spec(PORTFOLIO).unwrap();
        let doc_example = include_str!("xlsx.rs")
            .split("//! ```json\n")
            .nth(1)
            .and_then(|rest| rest.split("//! ```\n").next())
            .unwrap()
            .lines()
            .map(|line| line.trim_start_matches("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        check_spec(&doc_example).unwrap();
    }

    #[test]
    fn a_spec_writes_titles_typed_cells_and_a_sum_formula() {
        let bytes = render(PORTFOLIO, &portfolio_context()).unwrap();
        let sheet = Sheet::open(&bytes);

        // Titles, first one bold, then a blank row and the bold header on row 4.
        assert_eq!(sheet.text("A1"), "Portfolio of Mbarga & Fils");
        assert!(sheet.is_bold(sheet.cell("A1").unwrap().style));
        assert_eq!(sheet.text("A2"), "As of 2024-06-30T12:00:00Z");
        assert!(!sheet.is_bold(sheet.cell("A2").unwrap().style));
        assert!(sheet.cell("A3").is_none());
        for (reference, header) in [
            ("A4", "Number"),
            ("B4", "Premium"),
            ("C4", "Start"),
            ("D4", "Rate"),
            ("E4", "Count"),
        ] {
            assert_eq!(sheet.text(reference), header);
            assert!(
                sheet.is_bold(sheet.cell(reference).unwrap().style),
                "{reference}"
            );
        }

        // Text stays text; amounts are numbers in the XAF format, even one sent as a string.
        assert_eq!(sheet.text("A5"), "P-001");
        assert!(matches!(
            sheet.cell("A5").unwrap().kind.as_deref(),
            Some("inlineStr" | "s")
        ));
        let premium = sheet.cell("B5").unwrap();
        assert_eq!(
            (premium.kind.as_deref(), premium.text.as_str()),
            (None, "150000")
        );
        assert_eq!(sheet.number_format(premium.style), "#,##0 \"XAF\"");
        assert_eq!(sheet.text("B6"), "25000.5");
        assert_eq!(sheet.cell("B6").unwrap().kind, None);

        // Dates are serial numbers with a date style; the offset is not applied; a value
        // that is not a date stays text.
        let start = sheet.cell("C5").unwrap();
        assert_eq!(
            (start.kind.as_deref(), start.text.clone()),
            (None, excel_serial("2024-01-15"))
        );
        assert_eq!(sheet.number_format(start.style), "yyyy-mm-dd");
        assert_eq!(sheet.text("C6"), excel_serial("2024-03-01"));
        assert_eq!(sheet.text("C7"), "soon");
        assert!(matches!(
            sheet.cell("C7").unwrap().kind.as_deref(),
            Some("inlineStr" | "s")
        ));

        // Percent and integer formats; a null is no cell at all.
        assert_eq!(sheet.text("D5"), "0.05");
        assert_eq!(
            sheet.number_format(sheet.cell("D5").unwrap().style),
            "0.00%"
        );
        assert!(sheet.cell("D7").is_none());
        assert_eq!(sheet.text("E7"), "3");
        assert_eq!(sheet.number_format(sheet.cell("E7").unwrap().style), "0");

        // Totals: bold label, SUM formulas over the data rows with the value cached.
        assert_eq!(sheet.text("A8"), "Total");
        let total = sheet.cell("B8").unwrap();
        assert_eq!(total.formula.as_deref(), Some("SUM(B5:B7)"));
        assert_eq!(total.text, "176000.5");
        assert!(sheet.is_bold(total.style));
        assert_eq!(sheet.number_format(total.style), "#,##0 \"XAF\"");
        let count = sheet.cell("E8").unwrap();
        assert_eq!(
            (count.formula.as_deref(), count.text.as_str()),
            (Some("SUM(E5:E7)"), "6")
        );
        assert!(sheet.cell("C8").is_none());

        // Frozen below the header, autofilter over header and data, widths from the spec.
        assert!(sheet.xml.contains(r#"topLeftCell="A5""#), "{}", sheet.xml);
        assert!(
            sheet.xml.contains(r#"<autoFilter ref="A4:E7"/>"#),
            "{}",
            sheet.xml
        );
        // Widths from the spec (18, 14), else from the format (date 12, percent and integer
        // 10); Excel stores them with its padding added.
        let widths: Vec<String> = (1..=5).map(|col| sheet.column_width(col)).collect();
        assert_eq!(
            widths,
            [
                "18.7109375",
                "14.7109375",
                "12.7109375",
                "10.7109375",
                "10.7109375"
            ]
        );
        assert!(
            part(&bytes, "xl/workbook.xml")
                .unwrap()
                .contains(r#"name="Policies""#)
        );
    }

    #[test]
    fn a_hundred_thousand_rows_render_under_the_default_fuel() {
        let policies: Vec<serde_json::Value> = (0..100_000)
            .map(|i| {
                json!({
                    "number": format!("P-{i:06}"),
                    "premium": 1000 + i,
                    "start": "2024-01-15",
                    "holder": {"name": format!("Client {i}")},
                })
            })
            .collect();
        let context = json!({"inline_context": {"policies": policies}});
        let spec = one_sheet(
            "inline_context.policies",
            json!([
                {"header": "Number", "value": "row.number", "format": "text"},
                {"header": "Holder", "value": "row.holder.name | upper"},
                {"header": "Premium", "value": "row.premium", "format": "currency", "currency": "EUR"},
                {"header": "Start", "value": "row.start", "format": "date"},
                {"header": "N", "value": "loop.index", "format": "integer"},
            ]),
        );

        let started = Instant::now();
        let bytes = render_xlsx(Some(&spec), context, FUEL, usize::MAX).unwrap();
        eprintln!(
            "100 000 rows x 5 columns: {:?}, {} bytes",
            started.elapsed(),
            bytes.len()
        );

        let sheet = Sheet::open(&bytes);
        assert_eq!(sheet.text("A100001"), "P-099999");
        assert_eq!(sheet.text("B100001"), "CLIENT 99999");
        assert_eq!(sheet.text("C100001"), "100999");
        assert_eq!(sheet.text("D100001"), excel_serial("2024-01-15"));
        assert_eq!(sheet.text("E100001"), "100000");
        assert!(sheet.cell("A100002").is_none());
    }

    #[test]
    fn without_a_template_every_leaf_gets_a_dotted_or_indexed_key() {
        let context = json!({
            "inline_context": {
                "client": {"name": "Ada", "address": {"city": "Douala"}, "vip": true},
                "items": [{"name": "car", "value": 12.5}, {"name": "house", "value": null}],
                "tags": [],
                "big": 12345678901234567890u64,
                "odd.key": "x",
            },
            "document": {"document_type": "export"},
        });
        let bytes = render_xlsx(None, context, FUEL, usize::MAX).unwrap();
        let sheet = Sheet::open(&bytes);
        assert!(
            part(&bytes, "xl/workbook.xml")
                .unwrap()
                .contains(r#"name="Data""#)
        );

        let mut rows = std::collections::BTreeMap::new();
        for row in 2.. {
            let Some(key) = sheet.cell(&format!("A{row}")) else {
                break;
            };
            rows.insert(key.text, sheet.cell(&format!("B{row}")));
        }
        let value = |key: &str| rows[key].as_ref().map(|c| (c.kind.clone(), c.text.clone()));
        assert_eq!(sheet.text("A1"), "Key");
        assert_eq!(sheet.text("B1"), "Value");
        assert!(sheet.is_bold(sheet.cell("A1").unwrap().style));
        assert_eq!(value("client.address.city").unwrap().1, "Douala");
        assert_eq!(value("client.name").unwrap().1, "Ada");
        assert_eq!(
            value("client.vip"),
            Some((Some("b".to_owned()), "1".to_owned()))
        );
        assert_eq!(value("items[0].name").unwrap().1, "car");
        assert_eq!(value("items[0].value"), Some((None, "12.5".to_owned())));
        assert_eq!(value("items[1].name").unwrap().1, "house");
        assert_eq!(value("items[1].value"), None);
        assert_eq!(value("tags"), None);
        // Too large for a double: kept exact, as text.
        assert_eq!(value("big").unwrap().1, "12345678901234567890");
        assert_eq!(value("[\"odd.key\"]").unwrap().1, "x");
        assert_eq!(rows.len(), 10, "{rows:?}");
        assert!(
            !sheet.xml.contains('{') && !sheet.xml.contains("Object"),
            "{}",
            sheet.xml
        );
        assert!(sheet.shared.iter().all(|s| !s.contains('{')));
        assert!(
            sheet.xml.contains(r#"<autoFilter ref="A1:B11"/>"#),
            "{}",
            sheet.xml
        );
    }

    #[test]
    fn without_a_template_or_inline_context_only_the_header_is_written() {
        let bytes = render_xlsx(None, json!({"now": "x"}), FUEL, usize::MAX).unwrap();
        let sheet = Sheet::open(&bytes);
        assert_eq!(sheet.text("A1"), "Key");
        assert!(sheet.cell("A2").is_none());
    }

    #[test]
    fn numeric_columns_parse_numeric_strings_and_keep_the_rest_as_text() {
        let spec = one_sheet(
            "inline_context.rows",
            json!([
                {"header": "N", "value": "row", "format": "number"},
                {"header": "When", "value": "row", "format": "datetime"},
                {"header": "Raw", "value": "row"},
                {"header": "Fmt", "value": "row", "format": "number", "num_format": "0.000"},
            ]),
        );
        let context = json!({"inline_context": {"rows": [" 42.5 ", "n/a", "2024-01-15T10:30:00", true, [1, 2]]}});
        let sheet = Sheet::open(&render(&spec, &context).unwrap());
        assert_eq!(
            (sheet.cell("A2").unwrap().kind, sheet.text("A2")),
            (None, "42.5".to_owned())
        );
        assert_eq!(sheet.number_format(sheet.cell("A2").unwrap().style), "0.00");
        assert_eq!(sheet.text("A3"), "n/a");
        assert_eq!(sheet.cell("A5").unwrap().kind.as_deref(), Some("b"));
        assert_eq!(sheet.text("A6"), "[1,2]");
        let when = sheet.cell("B4").unwrap();
        let serial: f64 = when.text.parse().unwrap();
        let expected: f64 = excel_serial("2024-01-15").parse::<f64>().unwrap() + 10.5 / 24.0;
        assert!((serial - expected).abs() < 1e-9, "{serial}");
        assert_eq!(sheet.number_format(when.style), "yyyy-mm-dd hh:mm");
        assert_eq!(sheet.text("B3"), "n/a");
        assert_eq!(sheet.text("C2"), " 42.5 ");
        assert_eq!(
            sheet.number_format(sheet.cell("D2").unwrap().style),
            "0.000"
        );
    }

    #[test]
    fn invalid_json_is_an_invalid_spec_with_serdes_message() {
        let reason = spec_error(r#"{"sheets": [}"#);
        assert!(reason.contains("line 1 column"), "{reason}");
        let err = render_xlsx(Some("not json"), json!({}), FUEL, usize::MAX).unwrap_err();
        assert!(matches!(err, RenderError::InvalidSpec(_)), "{err}");
        assert!(spec_error(r#"{"sheets": []}"#).contains("at least one sheet"));
        assert!(spec_error(&one_sheet("x", json!([]))).contains("at least one column"));
    }

    #[test]
    fn an_unknown_format_or_field_is_refused() {
        let reason = spec_error(&one_sheet(
            "x",
            json!([{"header": "A", "value": "row", "format": "money"}]),
        ));
        assert!(
            reason.contains("unknown variant `money`") && reason.contains("`currency`"),
            "{reason}"
        );
        let reason = spec_error(&one_sheet(
            "x",
            json!([{"header": "A", "value": "row", "widht": 3}]),
        ));
        assert!(reason.contains("unknown field `widht`"), "{reason}");
        let reason = spec_error(&one_sheet(
            "x",
            json!([{"header": "A", "value": "row", "format": "currency", "currency": "euro"}]),
        ));
        assert!(
            reason.contains("\"euro\" is not a three-letter"),
            "{reason}"
        );
    }

    #[test]
    fn bad_sheet_names_are_refused() {
        let named = |name: &str| {
            json!({"sheets": [{"name": name, "rows": "x", "columns": [{"header": "A", "value": "row"}]}]})
                .to_string()
        };
        assert!(spec_error(&named("")).contains("empty"));
        assert!(spec_error(&named(&"x".repeat(32))).contains("32 characters"));
        check_spec(&named(&"é".repeat(31))).unwrap();
        assert!(spec_error(&named("Q1/Q2")).contains("contains '/'"));
        assert!(spec_error(&named("a[1]")).contains("contains '['"));
        assert!(spec_error(&named("'quoted'")).contains("apostrophe"));
        let twice = json!({"sheets": [
            {"name": "Policies", "rows": "x", "columns": [{"header": "A", "value": "row"}]},
            {"name": "POLICIES", "rows": "x", "columns": [{"header": "A", "value": "row"}]},
        ]});
        assert!(spec_error(&twice.to_string()).contains("two sheets are named \"POLICIES\""));
    }

    #[test]
    fn expression_syntax_errors_are_refused_when_saved() {
        let reason = spec_error(&one_sheet(
            "x",
            json!([{"header": "Premium", "value": "row.premium +"}]),
        ));
        assert!(
            reason.starts_with("sheet \"S\", column \"Premium\": syntax error"),
            "{reason}"
        );
        let reason = spec_error(&one_sheet(
            "inline_context.(",
            json!([{"header": "A", "value": "row"}]),
        ));
        assert!(reason.contains("`rows` expression"), "{reason}");
        let reason = spec_error(
            &json!({"sheets": [{"name": "S", "rows": "x", "title": ["ok", "{{ broken"],
                "columns": [{"header": "A", "value": "row"}]}]})
            .to_string(),
        );
        assert!(reason.contains("title line 2"), "{reason}");
    }

    #[test]
    fn totals_must_name_numeric_columns() {
        let with_totals = |columns: serde_json::Value| {
            json!({"sheets": [{"name": "S", "rows": "x", "columns": [
                {"header": "Label", "value": "row.a"},
                {"header": "Start", "value": "row.b", "format": "date"},
                {"header": "Amount", "value": "row.c", "format": "number"},
            ], "totals": {"columns": columns}}]})
            .to_string()
        };
        assert!(
            spec_error(&with_totals(json!(["Amout"])))
                .contains("\"Amout\", which is not one of the headers (Label, Start, Amount)")
        );
        assert!(spec_error(&with_totals(json!(["Start"]))).contains("its format is date"));
        assert!(spec_error(&with_totals(json!(["Label"]))).contains("holds the label"));
        check_spec(&with_totals(json!(["Amount"]))).unwrap();
    }

    #[test]
    fn a_failing_expression_names_the_sheet_column_and_row() {
        let spec = one_sheet(
            "inline_context.rows",
            json!([{"header": "Name", "value": "row.name"}, {"header": "Premium", "value": "row.premium + 1"}]),
        );
        let context = json!({"inline_context": {"rows": [{"premium": 1}, {"premium": 2}, {"premium": "abc"}]}});
        let err = render(&spec, &context).unwrap_err();
        let RenderError::Runtime(reason) = &err else {
            panic!("{err:?}")
        };
        assert!(
            reason.starts_with(
                "sheet \"S\", column \"Premium\", row 3 (Excel row 4): invalid operation"
            ),
            "{reason}"
        );
    }

    #[test]
    fn rows_that_are_not_an_array_are_refused_saying_what_they_were() {
        let spec = one_sheet(
            "inline_context.rows",
            json!([{"header": "A", "value": "row"}]),
        );
        for (rows, expected) in [
            (json!({"a": 1}), "gave an object, not an array"),
            (json!("text"), "gave a string (text), not an array"),
            (json!(null), "gave null, not an array"),
        ] {
            let err = render(&spec, &json!({"inline_context": {"rows": rows}})).unwrap_err();
            assert!(matches!(err, RenderError::Runtime(_)), "{err:?}");
            assert!(err.to_string().contains(expected), "{err}");
        }
        let err = render(&spec, &json!({"inline_context": {}})).unwrap_err();
        assert!(err.to_string().contains("gave nothing (undefined"), "{err}");
    }

    #[test]
    fn output_over_max_bytes_is_refused() {
        let err = render_xlsx(Some(PORTFOLIO), portfolio_context(), FUEL, 1000).unwrap_err();
        assert!(
            matches!(err, RenderError::TooLarge { size, limit: 1000 } if size > 1000),
            "{err:?}"
        );
        let err = render_xlsx(None, portfolio_context(), FUEL, 1000).unwrap_err();
        assert!(matches!(err, RenderError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn a_runaway_expression_runs_out_of_fuel() {
        let spec = one_sheet(
            "inline_context.rows",
            json!([{"header": "A", "value": RUNAWAY}]),
        );
        let err = render(&spec, &json!({"inline_context": {"rows": [1, 2, 3]}})).unwrap_err();
        assert!(matches!(err, RenderError::OutOfFuel), "{err:?}");
        // The same budget guards the rows expression and the titles.
        let err = render(
            &one_sheet(RUNAWAY, json!([{"header": "A", "value": "row"}])),
            &json!({}),
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::OutOfFuel), "{err:?}");
        let titled = json!({"sheets": [{"name": "S", "rows": "[1]", "title": [format!("{{{{ {RUNAWAY} }}}}")],
            "columns": [{"header": "A", "value": "row"}]}]});
        let err = render(&titled.to_string(), &json!({})).unwrap_err();
        assert!(matches!(err, RenderError::OutOfFuel), "{err:?}");
        // One evaluation's budget is ample for real work: the chain without its loop.
        let spec = one_sheet(
            "[1]",
            json!([{"header": "A", "value": "range(100000)|map('string')|join|length"}]),
        );
        render(&spec, &json!({})).unwrap();
    }

    #[test]
    fn the_fuel_budget_is_per_evaluation_not_per_sheet() {
        // 2 000 rows × 3 columns cost thousands of fuel in all but a handful per cell, so a
        // budget of 50 renders the sheet: only a single evaluation can exhaust it.
        let spec = one_sheet(
            "inline_context.rows",
            json!([
                {"header": "N", "value": "row.n", "format": "integer"},
                {"header": "Name", "value": "row.name | upper"},
                {"header": "I", "value": "loop.index"},
            ]),
        );
        let rows: Vec<_> = (0..2_000).map(|n| json!({"n": n, "name": "x"})).collect();
        let bytes = render_xlsx(
            Some(&spec),
            json!({"inline_context": {"rows": rows}}),
            50,
            usize::MAX,
        )
        .unwrap();
        assert_eq!(Sheet::open(&bytes).text("C2001"), "2000");
    }

    const RUNAWAY: &str = "range(100000)|map('string')|sort|reverse|sort|reverse|sort|reverse|sort|reverse|sort|reverse|sort|reverse|sort|reverse|sort|reverse|join|length";
}
