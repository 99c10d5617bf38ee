//! The replay CPU (DESIGN.md section 5).
