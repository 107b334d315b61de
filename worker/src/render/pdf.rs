//! HTML → PDF with a pool of warm wkhtmltopdf processes.
