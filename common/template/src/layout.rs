//! A PDF's page layout, from a template's `options`.
//!
//! Templates are saved with their options checked here (the API refuses what the PDF
//! engine would not accept), and the worker builds wkhtmltopdf's arguments from the
//! [`PageLayout`] parsed here, so both sides read the options the same way.

use serde_json::{Map, Value};

use crate::RenderError;

const DEFAULT_MARGIN_MM: f64 = 15.0;
const MAX_MARGIN_MM: f64 = 100.0;
/// In the order of `-T -R -B -L`, which is also the order of `PageLayout::margins_mm`.
const MARGIN_OPTIONS: [&str; 4] = ["margin_top", "margin_right", "margin_bottom", "margin_left"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageSize {
    A3,
    A4,
    A5,
    Letter,
    Legal,
}

impl PageSize {
    const ALL: [PageSize; 5] = [
        PageSize::A3,
        PageSize::A4,
        PageSize::A5,
        PageSize::Letter,
        PageSize::Legal,
    ];

    /// Both the name templates use and the one `-s` takes.
    fn name(self) -> &'static str {
        match self {
            PageSize::A3 => "A3",
            PageSize::A4 => "A4",
            PageSize::A5 => "A5",
            PageSize::Letter => "Letter",
            PageSize::Legal => "Legal",
        }
    }

    /// Width and height in portrait, in millimetres.
    fn portrait_mm(self) -> (f64, f64) {
        match self {
            PageSize::A3 => (297.0, 420.0),
            PageSize::A4 => (210.0, 297.0),
            PageSize::A5 => (148.0, 210.0),
            PageSize::Letter => (215.9, 279.4),
            PageSize::Legal => (215.9, 355.6),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Orientation {
    Portrait,
    Landscape,
}

/// Page layout from a template's options. Built only by [`PageLayout::from_template_options`]
/// or [`Default`], so every value that reaches a job line has been validated: wkhtmltopdf
/// exits on an argument it cannot parse, which would cost a process per bad template.
#[derive(Debug, Clone, PartialEq)]
pub struct PageLayout {
    page_size: PageSize,
    orientation: Orientation,
    /// Top, right, bottom, left, in millimetres.
    margins_mm: [f64; 4],
}

impl Default for PageLayout {
    /// A4 portrait with 15 mm margins.
    fn default() -> Self {
        Self {
            page_size: PageSize::A4,
            orientation: Orientation::Portrait,
            margins_mm: [DEFAULT_MARGIN_MM; 4],
        }
    }
}

impl PageLayout {
    /// Reads `page_size` (A4 default; A3, A5, Letter, Legal, any case), `orientation`
    /// (`portrait` default, `landscape`), and margins in millimetres: `margin_mm` for all
    /// four, then `margin_top`/`margin_right`/`margin_bottom`/`margin_left` for one each
    /// (15 by default). Other keys belong to other formats and are ignored; a `null` value
    /// counts as unset. An invalid value is refused with a message naming its option.
    pub fn from_template_options(options: &Map<String, Value>) -> Result<Self, RenderError> {
        let mut parsed = Self::default();
        if let Some(value) = option(options, "page_size") {
            parsed.page_size = value
                .as_str()
                .and_then(|name| {
                    PageSize::ALL
                        .into_iter()
                        .find(|size| size.name().eq_ignore_ascii_case(name.trim()))
                })
                .ok_or_else(|| {
                    invalid(
                        "page_size",
                        format!("{value} is not one of A3, A4, A5, Letter, Legal"),
                    )
                })?;
        }
        if let Some(value) = option(options, "orientation") {
            parsed.orientation = match value.as_str().map(|s| s.trim().to_ascii_lowercase()) {
                Some(s) if s == "portrait" => Orientation::Portrait,
                Some(s) if s == "landscape" => Orientation::Landscape,
                _ => {
                    return Err(invalid(
                        "orientation",
                        format!("{value} is neither \"portrait\" nor \"landscape\""),
                    ));
                }
            };
        }
        if let Some(value) = option(options, "margin_mm") {
            parsed.margins_mm = [margin("margin_mm", value)?; 4];
        }
        for (slot, name) in parsed.margins_mm.iter_mut().zip(MARGIN_OPTIONS) {
            if let Some(value) = option(options, name) {
                *slot = margin(name, value)?;
            }
        }

        let (width, height) = parsed.page_mm();
        let [top, right, bottom, left] = parsed.margins_mm;
        if left + right >= width {
            return Err(invalid(
                "margin_left/margin_right",
                format!("{left} + {right} mm leave no room on a page {width} mm wide"),
            ));
        }
        if top + bottom >= height {
            return Err(invalid(
                "margin_top/margin_bottom",
                format!("{top} + {bottom} mm leave no room on a page {height} mm high"),
            ));
        }
        Ok(parsed)
    }

    fn page_mm(&self) -> (f64, f64) {
        let (width, height) = self.page_size.portrait_mm();
        match self.orientation {
            Orientation::Portrait => (width, height),
            Orientation::Landscape => (height, width),
        }
    }

    /// The page size as templates and wkhtmltopdf's `-s` spell it.
    pub fn page_size(&self) -> &'static str {
        self.page_size.name()
    }

    /// Whether the page is turned sideways.
    pub fn landscape(&self) -> bool {
        self.orientation == Orientation::Landscape
    }

    /// Top, right, bottom and left margins, in millimetres.
    pub fn margins_mm(&self) -> [f64; 4] {
        self.margins_mm
    }
}

/// Every name a template's `options` may use.
pub const OPTION_NAMES: [&str; 7] = [
    "page_size",
    "orientation",
    "margin_mm",
    "margin_top",
    "margin_right",
    "margin_bottom",
    "margin_left",
];

/// Checks a template's `options` and returns them as they should be stored: known names
/// only (an unknown one is refused, so a typo does not pass unnoticed), nulls dropped,
/// the page size and orientation spelled as documented (`a4 ` is stored `A4`), margins
/// rounded as they will be used (a margin of 1e-300 mm is stored as 0).
pub fn canonical_options(options: &Map<String, Value>) -> Result<Map<String, Value>, RenderError> {
    if let Some(unknown) = options.keys().find(|k| !OPTION_NAMES.contains(&k.as_str())) {
        return Err(invalid(
            unknown,
            format!("is not an option (they are {})", OPTION_NAMES.join(", ")),
        ));
    }
    let parsed = PageLayout::from_template_options(options)?;
    options
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| {
            let value = match name.as_str() {
                "page_size" => Value::from(parsed.page_size.name()),
                "orientation" => Value::from(match parsed.orientation {
                    Orientation::Portrait => "portrait",
                    Orientation::Landscape => "landscape",
                }),
                _ => Value::from(margin(name, value)?),
            };
            Ok((name.clone(), value))
        })
        .collect()
}

fn option<'a>(options: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    options.get(name).filter(|value| !value.is_null())
}

fn margin(name: &str, value: &Value) -> Result<f64, RenderError> {
    value
        .as_f64()
        .filter(|mm| (0.0..=MAX_MARGIN_MM).contains(mm))
        // Nothing finer than a hundredth of a millimetre can show on paper, and rounding
        // keeps the argument short (1e-300 would otherwise print as 300 digits).
        .map(|mm| (mm * 100.0).round() / 100.0)
        .ok_or_else(|| {
            invalid(
                name,
                format!("{value} is not a number of millimetres from 0 to {MAX_MARGIN_MM}"),
            )
        })
}

fn invalid(name: &str, why: String) -> RenderError {
    RenderError::InvalidLayout(format!("PDF option {name}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: Value) -> Result<PageLayout, RenderError> {
        let Value::Object(map) = value else {
            panic!("not an object: {value}")
        };
        PageLayout::from_template_options(&map)
    }

    #[test]
    fn the_openapi_description_names_every_option() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(common::model::LayoutOptions::schema()).unwrap();
        let mut described: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        described.sort_unstable();
        let mut known = OPTION_NAMES.to_vec();
        known.sort_unstable();
        assert_eq!(described, known);
        assert_eq!(MAX_MARGIN_MM, 100.0, "the description says 100 mm at most");
    }

    #[test]
    fn invalid_options_are_refused_naming_the_option() {
        for (value, option) in [
            (json!({"page_size": "B5"}), "page_size"),
            (json!({"page_size": 4}), "page_size"),
            (json!({"orientation": "sideways"}), "orientation"),
            (json!({"margin_mm": "15mm"}), "margin_mm"),
            (json!({"margin_top": -1}), "margin_top"),
            (json!({"margin_bottom": 101}), "margin_bottom"),
            (
                json!({"margin_left": 80, "margin_right": 80, "page_size": "A5"}),
                "margin_left/margin_right",
            ),
            (
                json!({"margin_mm": 75, "orientation": "landscape", "page_size": "A5"}),
                "margin_top/margin_bottom",
            ),
        ] {
            let error = options(value.clone()).unwrap_err();
            assert!(
                matches!(error, RenderError::InvalidLayout(_)),
                "{value}: {error}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("invalid page layout: PDF option {option}:")),
                "{value}: {error}"
            );
        }
    }

    #[test]
    fn canonical_options_are_spelled_as_documented() {
        let Value::Object(map) = json!({"page_size": "a4 ", "orientation": "LANDSCAPE", "margin_top": 1e-300, "margin_left": null})
        else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(canonical_options(&map).unwrap()),
            json!({"page_size": "A4", "orientation": "landscape", "margin_top": 0.0})
        );
        let Value::Object(typo) = json!({"page_sise": "A4"}) else {
            unreachable!()
        };
        let error = canonical_options(&typo).unwrap_err();
        assert!(error.to_string().contains("page_sise"), "{error}");
    }
}
