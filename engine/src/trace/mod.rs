//! The recording file format (DESIGN.md section 8).
