//! Documents at rest: brotli compression, then AES-256-GCM in fixed-size chunks.
