//! (filled in by the REST API work)
