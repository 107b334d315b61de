//! What a template is, shared by the API (which checks templates when they are saved)
//! and the workers (which render them).
//!
//! # Layout
//! - this module: [`RenderError`], the readable reason a template cannot be rendered;
//!   HTML rendering with minijinja ([`render_html`]) and its parse-only check
//!   ([`check_syntax`]); the built-in layout ([`BUILTIN_HTML`]).
//! - [`json_view`]: a JSON context read by templates in place, not converted whole.
//! - [`layout`]: a PDF's page layout from a template's `options`.
//! - [`xlsx`]: sheet specs, checked ([`xlsx::check_spec`]) and rendered to workbooks.
//!
//! No engine and no I/O here: the wkhtmltopdf pool, storage and the database belong to the
//! worker. The API links this crate for its checks only; rendering happens in workers
//! (previews too: they are rendered by a worker as a short-lived document).
//!
//! Templates are minijinja (Jinja2 syntax, as the original product used). HTML output is
//! auto-escaped whatever the template's name, so a client's name containing `<script>`
//! prints as text. Every render gets a fuel budget: a runaway loop runs out of fuel and
//! fails its job with a readable reason instead of spinning a worker forever.

pub mod json_view;
pub mod layout;
pub mod xlsx;

use minijinja::{AutoEscape, Environment, ErrorKind, Value};

/// Shown when a request names no template: every `inline_context` entry as a table row.
pub const BUILTIN_HTML: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ document.document_type }}</title></head>
<body>
<h1>{{ document.document_type }}</h1>
<table>
{%- for key, value in inline_context|dictsort %}
<tr><th>{{ key }}</th><td>{% if value is string %}{{ value }}{% else %}{{ value|tojson }}{% endif %}</td></tr>
{%- endfor %}
</table>
<p>Generated {{ now }}</p>
</body>
</html>
"#;

/// Why a template could not be rendered. Each is permanent: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template syntax error: {0}")]
    Syntax(String),
    #[error(
        "the template ran too long (it exceeded its instruction budget; look for a runaway loop)"
    )]
    OutOfFuel,
    #[error("template error: {0}")]
    Runtime(String),
    #[error("invalid sheet spec: {0}")]
    InvalidSpec(String),
    #[error("invalid page layout: {0}")]
    InvalidLayout(String),
    #[error("the rendered document is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Renders `source` to HTML with auto-escaping, a fuel budget and an output size limit.
pub fn render_html(
    source: &str,
    context: &serde_json::Value,
    fuel: u64,
    max_bytes: usize,
) -> Result<String, RenderError> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.set_fuel(Some(fuel));
    let template = env
        .template_from_str(source)
        .map_err(|e| RenderError::Syntax(describe(&e)))?;
    let output = template
        .render(Value::from(minijinja::value::Serde(context)))
        .map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => RenderError::OutOfFuel,
            ErrorKind::SyntaxError => RenderError::Syntax(describe(&e)),
            _ => RenderError::Runtime(describe(&e)),
        })?;
    if output.len() > max_bytes {
        return Err(RenderError::TooLarge {
            size: output.len(),
            limit: max_bytes,
        });
    }
    Ok(output)
}

/// Parses a template without rendering it, to refuse broken content when it is saved.
pub fn check_syntax(source: &str) -> Result<(), RenderError> {
    let env = Environment::new();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| RenderError::Syntax(describe(&e)))
}

/// One line a person can act on: what went wrong and on which line.
fn describe(err: &minijinja::Error) -> String {
    let detail = err
        .detail()
        .map(str::to_owned)
        .unwrap_or_else(|| err.kind().to_string());
    match err.line() {
        Some(line) => format!("{detail} (line {line})"),
        None => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FUEL: u64 = 100_000;

    #[test]
    fn html_is_escaped() {
        let out = render_html(
            "<p>{{ inline_context.name }}</p>",
            &json!({"inline_context": {"name": "<script>alert(1)</script>"}}),
            FUEL,
            1 << 20,
        )
        .unwrap();
        assert_eq!(out, "<p>&lt;script&gt;alert(1)&lt;&#x2f;script&gt;</p>");
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let err = render_html(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &json!({}),
            FUEL,
            usize::MAX,
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::OutOfFuel), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = render_html("line one\n{% if %}", &json!({}), FUEL, 1 << 20).unwrap_err();
        assert!(matches!(err, RenderError::Syntax(_)), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn output_over_the_limit_is_refused() {
        let err = render_html("{{ 'x' * 100 }}", &json!({}), FUEL, 10).unwrap_err();
        assert!(
            matches!(
                err,
                RenderError::TooLarge {
                    size: 100,
                    limit: 10
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_builtin_template_lists_the_inline_context() {
        let out = render_html(
            BUILTIN_HTML,
            &json!({"inline_context": {"b": 2, "a": "x & y", "n": {"k": [1]}}, "document": {"document_type": "quote"}, "now": "today"}),
            FUEL,
            1 << 20,
        )
        .unwrap();
        assert!(
            out.contains("<tr><th>a</th><td>x &amp; y</td></tr>"),
            "{out}"
        );
        assert!(out.contains("<tr><th>b</th><td>2</td></tr>"), "{out}");
        assert!(out.find("<th>a</th>") < out.find("<th>b</th>"));
    }
}
