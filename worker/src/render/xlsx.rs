//! XLSX documents from a sheet spec (or from the inline context when there is no template).
