//! CSV records (RFC 4180) for the exports: the audit log and a batch archive's manifest.
//!
//! A field is quoted when it holds the delimiter, a quote or a line break; a field that a
//! spreadsheet would read as a formula (`=`, `+`, `-`, `@` first) is quoted and prefixed
//! with `'`, so opening an export cannot run what a client wrote into it.

/// One record, CRLF-terminated.
pub fn write_record<'a>(out: &mut Vec<u8>, delimiter: u8, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        write_field(out, delimiter, field);
    }
    out.extend_from_slice(b"\r\n");
}

pub fn write_field(out: &mut Vec<u8>, delimiter: u8, field: &str) {
    let neutralise = field.starts_with(['=', '+', '-', '@']);
    let quote = neutralise
        || field
            .bytes()
            .any(|b| b == delimiter || matches!(b, b'"' | b'\n' | b'\r'));
    if quote {
        out.push(b'"');
    }
    if neutralise {
        out.push(b'\'');
    }
    for b in field.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    if quote {
        out.push(b'"');
    }
}
